"""The Query/Retrieve service (PS3.4 Annex C): what the pynetdicom server adds for it.

C-ECHO, C-FIND, C-MOVE and C-GET for Patient Root and Study Root: the presentation
contexts, the handlers (:mod:`archive.query.dimse.find`, :mod:`archive.query.dimse.retrieve`)
bound to the backends they read (:class:`QueryRetrieve`, reached from the handlers'
threads through the portal), and SOP Class Extended Negotiation. ``serve`` adds this
service to the receiver's AE; the ``query`` role runs it on its own port.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.events import Event
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from archive import metrics
from archive.ae_config import Permission
from archive.compat.pynetdicom import RequestGuard
from archive.core.audit import AuditTrail, NoAudit
from archive.core.ports import Catalog, ObjectStore
from archive.query.dimse.find import handle_find
from archive.query.dimse.identifier import extended_answer
from archive.query.dimse.retrieve import handle_get, handle_move
from archive.scp.access import NOT_AUTHORIZED, AccessPolicy
from archive.scp.portal import Portal
from archive.scp.pynetdicom_engine import DimseService
from archive.scp.pynetdicom_engine.contexts import storage_contexts
from archive.settings import Settings


@dataclass(frozen=True)
class QueryRetrieve:
    """The backends C-FIND, C-MOVE and C-GET read; their coroutines run on the backends' loop.

    ``spool_dir`` takes the instances a retrieve sends, one file per sub-operation.
    """

    catalog: Catalog
    store: ObjectStore
    spool_dir: Path
    audit: AuditTrail = field(default_factory=NoAudit)  # Query, Begin Transferring, Instances Transferred


def handle_sop_extended(event: Event) -> dict[str, bytes]:
    """SOP Class Extended Negotiation (PS3.4 C.5.1, PS3.7 D.3.3.5): :func:`extended_answer` for each asked."""
    answers: dict[str, bytes] = {}
    for uid, info in (event.app_info or {}).items():  # type: ignore[attr-defined]
        answer = extended_answer(str(uid), bytes(info or b""))
        if answer is not None:
            answers[str(uid)] = answer
    return answers


FIND_MODELS = (PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind)
MOVE_MODELS = (PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove)
GET_MODELS = (PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet)


def permission_guard(access: AccessPolicy) -> RequestGuard:
    """Before each C-FIND (query) or C-MOVE/C-GET (retrieve): may the calling AE do it
    (ARCHIVE_AE_CONFIG)? If not, 0x0124 Refused: Not Authorized (PS3.7 Annex C; PS3.4 C.4 has no
    status of its own for it), nothing looked up, no destination contacted."""
    def guard(assoc: Any, request: Any) -> tuple[int, str] | None:
        permission = Permission.QUERY if isinstance(request, C_FIND) else Permission.RETRIEVE
        if access.authorize(assoc.requestor.ae_title, str(assoc.requestor.address), permission):
            return None
        metrics.QUERIES.labels(_OPERATION[type(request).__name__], "-", "not_authorized").inc()
        return NOT_AUTHORIZED, f"Calling AE title may not {permission.value} here"
    return guard


_OPERATION = {"C_FIND": "cfind", "C_MOVE": "cmove", "C_GET": "cget"}


def query_retrieve_service(qr: QueryRetrieve, portal: Portal, settings: Settings,
                           access: AccessPolicy | None = None) -> DimseService:
    """C-ECHO, C-FIND, C-MOVE and C-GET for Patient Root and Study Root.

    The storage contexts let a C-GET requestor take the SCP role for the
    instances it retrieves (SCP/SCU Role Selection).
    """
    access = access if access is not None else AccessPolicy.from_settings(settings)
    syntaxes = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    models = [build_context(m, syntaxes) for m in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS, Verification)]
    args = [qr, portal, settings]
    return DimseService(
        contexts=(*models, *storage_contexts(retrieve_roles=True)),
        handlers=(
            (evt.EVT_C_FIND, handle_find, args),
            (evt.EVT_C_MOVE, handle_move, [*args, access]),
            (evt.EVT_C_GET, handle_get, args),
            (evt.EVT_SOP_EXTENDED, handle_sop_extended),
        ),
        guard=permission_guard(access),
    )
