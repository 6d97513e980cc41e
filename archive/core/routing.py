"""Forwarding rules (ARCHIVE_ROUTING_RULES) and the forward jobs they make.

A rules file names, per rule, which instances (C-FIND matching on any attribute of the
stored header, PS3.4 C.2.2.2; the calling AE title), when (each instance once indexed), where
(AE titles of configured peers) and what to change on the way (attributes of the copy sent,
never of the stored one)::

    rules:
      - name: ct-to-pacs
        match:
          Modality: CT
          StudyDate: 20240101-
        calling_aet: [CT1, CT2]      # optional
        trigger: instance
        destinations: [PACS]
        set: {InstitutionName: Example Hospital}
        prefix: {AccessionNumber: "EXT-"}

The indexer evaluates the rules after it committed an instance and queues one
:class:`ForwardJob` per destination on that destination's own queue; forwarders send them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from archive.core.errors import ConfigError, PoisonMessage
from archive.core.matching import all_match
from archive.core.models import IndexMessage
from archive.core.query import InvalidQuery, Matcher, classify
from archive.core.records import CatalogInstance
from archive.core.uids import validate_uid

JOB_VERSION = 1
TRIGGERS = ("instance", "stable")
DEFAULT_STABLE_SECONDS = 60.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RULE_KEYS = ("name", "match", "calling_aet", "trigger", "stable_seconds", "destinations", "set", "prefix")
# what a copy on the way may not change: its identity, and what its encoding depends on
_FIXED_VRS = ("UI", "SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN")
_FIXED_KEYWORDS = ("SpecificCharacterSet", "PixelData")
_MAX_VALUE = 1024


class RulesError(ConfigError):
    """The rules file is unusable; the message names the file, the rule and the key."""


def ae_title_problem(aet: object) -> str | None:
    if not isinstance(aet, str) or not 1 <= len(aet.strip()) <= 16 or not aet.isascii() or "\\" in aet \
            or not aet.isprintable():
        return f"{aet!r} is not an AE title (1-16 printable ASCII characters, no backslash)"
    return None


def is_url(destination: str) -> bool:
    return destination.startswith(("http://", "https://"))


def destination_problem(value: object) -> str | None:
    """An AE title (a configured peer: DIMSE, or DICOMweb by its ARCHIVE_AE_CONFIG url) or a DICOMweb
    base URL (http(s), no credentials, query or fragment)."""
    if isinstance(value, str) and is_url(value):
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value)
            bad = not parts.hostname or parts.username or parts.password or parts.query or parts.fragment
        except ValueError:
            bad = True
        if bad or len(value) > 512 or not value.isprintable() or " " in value:
            return f"{value!r} is not a DICOMweb base URL (http(s)://host[:port]/path, no credentials or query)"
        return None
    return ae_title_problem(value)


@dataclass(frozen=True)
class Rule:
    name: str
    matchers: tuple[Matcher, ...] = ()
    calling_aets: frozenset[str] = frozenset()  # empty: any
    trigger: str = "instance"
    destinations: tuple[str, ...] = ()
    set: tuple[tuple[str, str], ...] = ()  # keyword, value
    prefix: tuple[tuple[str, str], ...] = ()  # keyword, text put before the value
    stable_seconds: float = DEFAULT_STABLE_SECONDS  # trigger "stable": quiet time before the study is sent

    @property
    def watcher(self) -> str:
        """Its name in study-stable detection (StablePending.name)."""
        return f"rule:{self.name}"

    def applies(self, message: IndexMessage) -> bool:
        if self.calling_aets and message.source_aet.strip() not in self.calling_aets:
            return False
        return all_match(self.matchers, message.metadata)


@dataclass(frozen=True)
class Rules:
    rules: tuple[Rule, ...] = ()
    source: str = ""

    @property
    def destinations(self) -> tuple[str, ...]:
        """Every destination any rule names, each once, in order."""
        return tuple(dict.fromkeys(d for r in self.rules for d in r.destinations))

    @property
    def stable_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.trigger == "stable")

    def jobs(self, message: IndexMessage, at: float) -> list["ForwardJob"]:
        """One job per destination of each rule that applies to ``message`` (a destination named by
        two rules gets one job, the first rule's)."""
        jobs: dict[str, ForwardJob] = {}
        for rule in self.rules:
            if rule.trigger != "instance" or not rule.applies(message):
                continue
            for destination in rule.destinations:
                jobs.setdefault(destination, ForwardJob.of(message, destination, rule, at))
        return list(jobs.values())


# --- parsing -------------------------------------------------------------------------------------

def _vr(keyword: str) -> str:
    try:
        if tag_for_keyword(keyword) is None:
            raise KeyError(keyword)
        return str(dictionary_VR(keyword))
    except KeyError:
        raise ValueError(f"{keyword!r} is not a DICOM keyword") from None


def _text_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{value!r} is not a text or a number")
    return str(value)


def _matchers(value: Any) -> tuple[Matcher, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ValueError("must map DICOM keywords to values")
    out = []
    for keyword, raw in value.items():
        vr = _vr(str(keyword))
        if vr == "SQ":
            raise ValueError(f"{keyword}: sequence matching is not offered in rules")
        text = "\\".join(_text_value(v) for v in raw) if isinstance(raw, list) else _text_value(raw)
        try:
            out.append(classify(str(keyword), vr, text))
        except InvalidQuery as exc:
            raise ValueError(str(exc)) from None
    return tuple(out)


def _names(value: Any, what: str, problem: Callable[[object], str | None], kind: str) -> tuple[str, ...]:
    """One name (``kind``) or a list of them, each passing ``problem``, duplicates dropped."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError(f"{what} must be {kind} or a list of them")
    for item in items:
        if found := problem(item):
            raise ValueError(found)
    return tuple(dict.fromkeys(i.strip().rstrip("/") if is_url(i) else i.strip() for i in items))


def _changes(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ValueError("must map DICOM keywords to values")
    out = []
    for keyword, raw in value.items():
        vr = _vr(str(keyword))
        if vr in _FIXED_VRS or keyword in _FIXED_KEYWORDS:
            raise ValueError(f"{keyword} ({vr}) cannot be changed on the way")
        text = _text_value(raw)
        if len(text) > _MAX_VALUE or "\\" in text or not text.isprintable():
            raise ValueError(f"{keyword}: one printable value of at most {_MAX_VALUE} characters")
        out.append((str(keyword), text))
    return tuple(out)


def _rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: a rule is a mapping of {', '.join(_RULE_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RulesError(f"{where}: name: {name!r} is not a rule name (letters, digits, . _ -; at most 64)")
    where = f"{where} ({name})"
    unknown = sorted(str(k) for k in raw if k not in _RULE_KEYS)
    if unknown:
        raise RulesError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_RULE_KEYS)})")
    trigger = raw.get("trigger", "instance")
    if trigger not in TRIGGERS:
        raise RulesError(f"{where}: trigger: {trigger!r} is not one of {', '.join(TRIGGERS)}")
    stable_seconds = raw.get("stable_seconds", DEFAULT_STABLE_SECONDS)
    if "stable_seconds" in raw and trigger != "stable":
        raise RulesError(f"{where}: stable_seconds: only with trigger: stable")
    if isinstance(stable_seconds, bool) or not isinstance(stable_seconds, (int, float)) \
            or not 1 <= stable_seconds <= 86400:
        raise RulesError(f"{where}: stable_seconds: {stable_seconds!r} is not a number of seconds from 1 to 86400")
    try:
        matchers = _matchers(raw.get("match"))
    except ValueError as exc:
        raise RulesError(f"{where}: match: {exc}") from None
    try:
        calling = frozenset(_names(raw["calling_aet"], "calling_aet", ae_title_problem, "an AE title")) if raw.get("calling_aet") else frozenset()
    except ValueError as exc:
        raise RulesError(f"{where}: calling_aet: {exc}") from None
    if "destinations" not in raw:
        raise RulesError(f"{where}: destinations: missing (AE titles of configured peers)")
    try:
        destinations = _names(raw["destinations"], "destinations", destination_problem,
                              "an AE title, a DICOMweb URL")
    except ValueError as exc:
        raise RulesError(f"{where}: destinations: {exc}") from None
    changes = {}
    for key in ("set", "prefix"):
        try:
            changes[key] = _changes(raw.get(key))
        except ValueError as exc:
            raise RulesError(f"{where}: {key}: {exc}") from None
    return Rule(name, matchers, calling, trigger, destinations, changes["set"], changes["prefix"],
                float(stable_seconds))


def parse(text: str, source: str, peers: Iterable[str] | None = None) -> Rules:
    """The rules of a rules document (YAML or JSON); RulesError naming ``source``, the rule and key.
    With ``peers``, every destination must be one of them."""
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(f"{source}: not valid YAML or JSON: {exc}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict) or set(document) - {"rules"}:
        raise RulesError(f"{source}: must be a mapping with the one key 'rules'")
    raw_rules = document.get("rules")
    if raw_rules is None:
        raw_rules = []
    if not isinstance(raw_rules, list):
        raise RulesError(f"{source}: rules: must be a list of rules")
    rules = tuple(_rule(raw, f"{source}: rule {n}") for n, raw in enumerate(raw_rules, start=1))
    names = [r.name for r in rules]
    for name in names:
        if names.count(name) > 1:
            raise RulesError(f"{source}: rule name {name!r} is used twice")
    if peers is not None:
        known = set(peers)
        for rule in rules:
            for destination in rule.destinations:
                if destination not in known and not is_url(destination):
                    raise RulesError(f"{source}: rule {rule.name}: destination {destination!r} is not a configured "
                                     f"peer (ARCHIVE_PEERS, or an ARCHIVE_AE_CONFIG entry with host and port or url)")
    return Rules(rules, source)


def _patient_id(message: IndexMessage) -> str:
    values = (message.metadata.get("00100020") or {}).get("Value") or [""]
    return str(values[0] or "")


# --- forward jobs --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ForwardJob:
    """Send one stored instance to one destination (the body of a message on its forward queue)."""

    destination: str
    rule: str  # the rule's name, or "manual"
    key: str  # the object-store key
    sha256: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    queued_at: float
    set: Sequence[Sequence[str]] = field(default_factory=tuple)
    prefix: Sequence[Sequence[str]] = field(default_factory=tuple)
    patient_id: str = ""  # for the audit trail (PS3.15 puts it there), never for logs or metrics
    version: int = JOB_VERSION

    @classmethod
    def of(cls, message: IndexMessage, destination: str, rule: Rule, at: float) -> "ForwardJob":
        return cls(destination, rule.name, message.key, message.sha256, message.study_uid, message.series_uid,
                   message.sop_instance_uid, message.sop_class_uid, message.transfer_syntax_uid, at,
                   rule.set, rule.prefix, _patient_id(message))

    @classmethod
    def of_instance(cls, inst: CatalogInstance, destination: str, rule: Rule | None, at: float) -> "ForwardJob":
        """A job for a stored instance (a stable study's, or a manual send's when ``rule`` is None)."""
        return cls(destination, rule.name if rule else "manual", inst.object_key, inst.sha256, inst.study_uid,
                   inst.series_uid, inst.sop_instance_uid, inst.sop_class_uid, inst.transfer_syntax_uid, at,
                   rule.set if rule else (), rule.prefix if rule else (), inst.patient_id)

    def to_bytes(self) -> bytes:
        body = dict(vars(self), set=[list(p) for p in self.set], prefix=[list(p) for p in self.prefix])
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, body: bytes) -> "ForwardJob":
        """Parse and validate; PoisonMessage if unusable."""
        try:
            raw = json.loads(body)
            if not isinstance(raw, dict) or raw.get("version") != JOB_VERSION:
                raise ValueError("not a forward job of this version")
            job = cls(**raw)
            for value, name in ((job.study_uid, "StudyInstanceUID"), (job.series_uid, "SeriesInstanceUID"),
                                (job.sop_instance_uid, "SOPInstanceUID"), (job.sop_class_uid, "SOPClassUID"),
                                (job.transfer_syntax_uid, "TransferSyntaxUID")):
                validate_uid(value, name)
            if destination_problem(job.destination):
                raise ValueError("bad destination")
            for pairs in (job.set, job.prefix):
                if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in pairs):
                    raise ValueError("bad attribute changes")
            return cls(**dict(raw, set=tuple(tuple(p) for p in job.set), prefix=tuple(tuple(p) for p in job.prefix)))
        except PoisonMessage:
            raise
        except Exception as exc:
            raise PoisonMessage(f"unusable forward job: {exc}") from exc


def apply_changes(dataset: Any, job: ForwardJob) -> None:
    """The job's attribute changes on a pydicom Dataset (the copy being sent)."""
    for keyword, value in job.set:
        setattr(dataset, keyword, value)
    for keyword, text in job.prefix:
        current = getattr(dataset, keyword, "") or ""
        setattr(dataset, keyword, f"{text}{current}")


def summary(rules: Rules) -> list[Mapping[str, Any]]:
    """What ``rules check`` prints: each rule's conditions, trigger and destinations."""
    return [{"name": r.name, "match": [repr(m) for m in r.matchers], "calling_aet": sorted(r.calling_aets),
             "trigger": r.trigger, "destinations": list(r.destinations), "set": dict(r.set),
             "prefix": dict(r.prefix)} for r in rules.rules]

