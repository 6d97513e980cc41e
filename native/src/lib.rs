//! dicom-archive's native core: a received dataset's header, up to Pixel Data, read to DICOM JSON.
//!
//! `Header.read` walks the elements of a dataset (Explicit or Implicit VR Little Endian, no File
//! Meta) and gives the DICOM JSON of the common ones exactly as `archive.ingest.describe`'s plain
//! path gives it (`_plain_json`: the string VRs, person names without component groups, IS and
//! DS of plain numbers, US SS UL SL FL FD), the bulk markers of long values, and the four UIDs'
//! raw values, private elements included where their Private Creator is read here too. Every other
//! element (sequences with an element the core does not read in an item, private elements of
//! Implicit VR, other VRs, text that is not
//! ASCII under a character set that reads ASCII as ASCII, anything pydicom reads its own way) is
//! handed back as its own bytes, for pydicom to read exactly as it reads the whole dataset.
//! Sequences are read here when every element of every item is read by the same rules (the
//! dataset's character set; no private element, no character set of an item's own); otherwise
//! the sequence is handed back whole (one of undefined length: its end found by walking its items).
//! Anything unusual in the dataset's structure (an undefined length of anything but a sequence, an element out of order,
//! a VR pydicom would guess, a truncated value, the four UIDs not each one plain value) makes
//! `read` answer None: the Python path then reads the whole dataset, so every refusal and error
//! stays pydicom's. tests/unit/test_describe_native.py and the describe fuzz target compare both.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use std::collections::{HashMap, HashSet};

/// Values longer than this stay out of the metadata (describe.BULK_THRESHOLD, pydicom's defer_size).
const BULK_THRESHOLD: u32 = 16 * 1024;
/// A deferred sequence up to this size is read by describe._read_long_sequences.
const MAX_SEQUENCE_BYTES: u32 = 64 * 1024 * 1024;
const PIXEL_GROUP: u16 = 0x7FE0;
const CHARSET: u32 = 0x0008_0005;
const PIXEL_REPRESENTATION: u32 = 0x0028_0103;
/// Study, Series and SOP Instance UID, SOP Class UID: describe's order.
const UID_TAGS: [u32; 4] = [0x0020_000D, 0x0020_000E, 0x0008_0018, 0x0008_0016];
/// Elements pydicom reads other elements by (the character set; the ambiguous VRs' Pixel
/// Representation, Bits Allocated, LUT Descriptor, Waveform Bits Allocated): handed back with
/// the others whenever any are.
const CONTEXT: [u32; 5] = [CHARSET, 0x0028_0100, 0x0028_0103, 0x0028_3002, 0x5400_1004];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Vr {
    AE, AS, AT, CS, DA, DS, DT, FD, FL, IS, LO, LT, OB, OD, OF, OL, OV, OW, PN, SH, SL, SQ, SS, ST,
    SV, TM, UC, UI, UL, UN, UR, US, UT, UV,
}

impl Vr {
    fn parse(code: &[u8]) -> Option<Vr> {
        use Vr::*;
        Some(match code {
            b"AE" => AE, b"AS" => AS, b"AT" => AT, b"CS" => CS, b"DA" => DA, b"DS" => DS, b"DT" => DT,
            b"FD" => FD, b"FL" => FL, b"IS" => IS, b"LO" => LO, b"LT" => LT, b"OB" => OB, b"OD" => OD,
            b"OF" => OF, b"OL" => OL, b"OV" => OV, b"OW" => OW, b"PN" => PN, b"SH" => SH, b"SL" => SL,
            b"SQ" => SQ, b"SS" => SS, b"ST" => ST, b"SV" => SV, b"TM" => TM, b"UC" => UC, b"UI" => UI,
            b"UL" => UL, b"UN" => UN, b"UR" => UR, b"US" => US, b"UT" => UT, b"UV" => UV,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        use Vr::*;
        match self {
            AE => "AE", AS => "AS", AT => "AT", CS => "CS", DA => "DA", DS => "DS", DT => "DT",
            FD => "FD", FL => "FL", IS => "IS", LO => "LO", LT => "LT", OB => "OB", OD => "OD",
            OF => "OF", OL => "OL", OV => "OV", OW => "OW", PN => "PN", SH => "SH", SL => "SL",
            SQ => "SQ", SS => "SS", ST => "ST", SV => "SV", TM => "TM", UC => "UC", UI => "UI",
            UL => "UL", UN => "UN", UR => "UR", US => "US", UT => "UT", UV => "UV",
        }
    }

    /// PS3.5 7.1.2: two reserved bytes, then a 4-byte length.
    fn long_length(self) -> bool {
        use Vr::*;
        matches!(self, OB | OD | OF | OL | OV | OW | SQ | SV | UC | UN | UR | UT | UV)
    }

    /// The VRs of describe._PLAIN_VRS.
    fn plain(self) -> bool {
        use Vr::*;
        matches!(self, AS | CS | DA | DT | TM | UI | SH | LO | ST | LT | UT | US | SS | UL | SL | FL | FD
            | AE | UR | PN | IS | DS)
    }
}

/// Python's str.isspace() for ASCII: what str.strip() and str.rstrip() take off.
fn py_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | 0x1C..=0x1F)
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii() && py_space(c as u8))
}

fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(|c: char| c.is_ascii() && py_space(c as u8))
}

fn rstrip_nul_space(s: &str) -> &str {
    s.trim_end_matches(['\0', ' '])
}

/// ` *[+-]?[0-9]+ *`: what int() reads as pydicom's IS does.
fn is_integer(v: &str) -> Option<&str> {
    let t = v.trim_matches(' ');
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(t)
}

/// ` *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *`: a DS float() reads as pydicom does.
fn is_decimal(v: &str) -> Option<&str> {
    let t = v.trim_matches(' ');
    let b = t.strip_prefix(['+', '-']).unwrap_or(t).as_bytes();
    let mut i = 0;
    let whole = b.iter().take_while(|c| c.is_ascii_digit()).count();
    i += whole;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let fraction = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if whole == 0 && fraction == 0 {
            return None;
        }
        i += fraction;
    } else if whole == 0 {
        return None;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let exponent = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if exponent == 0 {
            return None;
        }
        i += exponent;
    }
    (i == b.len()).then_some(t)
}

/// One element's DICOM JSON, as describe._plain_json gives it; None: pydicom's way.
fn plain_json<'py>(py: Python<'py>, vr: Vr, value: &[u8], ascii_text: bool) -> PyResult<Option<Bound<'py, PyDict>>> {
    use Vr::*;
    let out = PyDict::new(py);
    out.set_item(intern!(py, "vr"), vr.name())?;
    if value.is_empty() {
        // binary VRs: pydicom reads an empty value as None, not bytes
        return Ok(if matches!(vr, US | SS | UL | SL | FL | FD) { None } else { Some(out) });
    }
    let list = PyList::empty(py);
    match vr {
        US | SS | UL | SL | FL | FD => {
            let size = match vr { US | SS => 2, UL | SL | FL => 4, _ => 8 };
            if value.len() % size != 0 {
                return Ok(None);
            }
            let mut finite = true;
            for chunk in value.chunks_exact(size) {
                match vr {
                    US => list.append(u16::from_le_bytes([chunk[0], chunk[1]]))?,
                    SS => list.append(i16::from_le_bytes([chunk[0], chunk[1]]))?,
                    UL => list.append(u32::from_le_bytes(chunk.try_into().unwrap()))?,
                    SL => list.append(i32::from_le_bytes(chunk.try_into().unwrap()))?,
                    FL => {
                        let x = f32::from_le_bytes(chunk.try_into().unwrap()) as f64;
                        finite &= x.is_finite();
                        list.append(x)?
                    }
                    _ => {
                        let x = f64::from_le_bytes(chunk.try_into().unwrap());
                        finite &= x.is_finite();
                        list.append(x)?
                    }
                }
            }
            if finite {
                out.set_item(intern!(py, "Value"), list)?;
            }
            return Ok(Some(out)); // NaN and Infinity are not DICOM JSON numbers: the element, no value
        }
        _ => {}
    }
    if !ascii_text || !value.is_ascii() || value.contains(&0x1B) {
        return Ok(None);
    }
    let text = std::str::from_utf8(value).expect("ASCII");
    let values: Vec<&str> = match vr {
        UI => rstrip_nul_space(text).split('\\').map(py_strip).collect(),
        AS | CS | DA | DT | TM => rstrip_nul_space(text).split('\\').collect(),
        SH | LO => text.split('\\').map(rstrip_nul_space).collect(),
        ST | LT | UT => vec![rstrip_nul_space(text)],
        AE => text.split('\\').map(py_strip).collect(),
        UR => vec![py_rstrip(text)],
        PN => {
            let values: Vec<&str> = rstrip_nul_space(text).split('\\').collect();
            if values.len() > 1 && values.iter().any(|v| v.is_empty()) || values.iter().any(|v| v.contains('=')) {
                return Ok(None); // component groups: PersonName's parsing; an empty one of several: its IndexError
            }
            values
        }
        IS | DS => {
            let text = if vr == DS { py_strip(text) } else { text };
            let values: Vec<&str> = rstrip_nul_space(text).split('\\').collect();
            if values == [""] {
                return Ok(Some(out));
            }
            let mut finite = true;
            for v in values {
                if vr == IS {
                    let Some(t) = is_integer(v) else { return Ok(None) };
                    let Ok(n) = t.parse::<i64>() else { return Ok(None) }; // beyond i64: pydicom's int
                    list.append(n)?;
                } else {
                    let Some(t) = is_decimal(v) else { return Ok(None) };
                    let Ok(x) = t.parse::<f64>() else { return Ok(None) };
                    finite &= x.is_finite();
                    list.append(x)?;
                }
            }
            if finite {
                out.set_item(intern!(py, "Value"), list)?;
            }
            return Ok(Some(out));
        }
        _ => return Ok(None),
    };
    if values == [""] {
        return Ok(Some(out));
    }
    for v in values {
        let owned;
        let v = if v.contains('\0') {
            owned = v.replace('\0', "");
            owned.as_str()
        } else {
            v
        };
        if vr == PN {
            let name = PyDict::new(py);
            name.set_item(intern!(py, "Alphabetic"), v)?;
            list.append(name)?;
        } else {
            list.append(PyString::new(py, v))?;
        }
    }
    out.set_item(intern!(py, "Value"), list)?;
    Ok(Some(out))
}

fn u16_at(data: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([data[at], data[at + 1]])
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

/// The header reader, with the data dictionary's VRs it needs for Implicit VR.
#[pyclass(frozen, module = "archive_native")]
struct Header {
    /// Standard tags whose dictionary VR is one of the plain VRs (describe._IMPLICIT_VR).
    implicit_vrs: HashMap<u32, Vr>,
    /// Standard tags whose dictionary VR is SQ.
    sequences: HashSet<u32>,
}

const ITEM: u32 = 0xFFFE_E000;
const ITEM_END: u32 = 0xFFFE_E00D;
const SEQUENCE_END: u32 = 0xFFFE_E0DD;
/// Sequences nested deeper than this take pydicom's way.
const MAX_DEPTH: usize = 32;

/// Does the element at `at` look like Explicit VR to pydicom (_is_implicit_vr: two capital letters
/// where Explicit VR has its VR)? False when fewer than six bytes are there.
fn looks_explicit(data: &[u8], at: usize) -> bool {
    data.len() >= at + 6 && (0x41..=0x5A).contains(&data[at + 4]) && (0x41..=0x5A).contains(&data[at + 5])
}

/// Does an item's content read as Implicit VR? pydicom's _is_implicit_vr for a sequence: an item of
/// an Explicit VR dataset whose first element does not look explicit is read as Implicit VR.
fn item_implicit(data: &[u8], at: usize, implicit: bool) -> bool {
    implicit || (data.len() >= at + 6 && !looks_explicit(data, at))
}

fn tag_at(data: &[u8], at: usize) -> Option<u32> {
    (data.len() >= at + 4).then(|| (u16_at(data, at) as u32) << 16 | u16_at(data, at + 2) as u32)
}

impl Header {
    /// Where an undefined-length value that starts at `at` ends, as pydicom reads it: the items of a
    /// sequence up to its delimiter. None for anything else (pydicom then reads the whole dataset).
    fn undefined_end(&self, data: &[u8], at: usize, tag: u32, vr: Option<Vr>, implicit: bool, depth: usize) -> Option<usize> {
        let sequence = match vr {
            Some(vr) => vr == Vr::SQ || vr == Vr::UN, // UN of undefined length is a sequence (PS3.5 6.2.2)
            // the dictionary's VR; a private tag is a sequence when an item follows (pydicom looks ahead)
            None => self.sequences.contains(&tag) || (tag >> 16) & 1 == 1 && tag_at(data, at) == Some(ITEM),
        };
        if !sequence || depth > MAX_DEPTH {
            return None;
        }
        let mut pos = at;
        loop {
            let item = tag_at(data, pos)?;
            if data.len() < pos + 8 {
                return None;
            }
            let length = u32_at(data, pos + 4);
            pos += 8;
            match item {
                SEQUENCE_END => return (length == 0).then_some(pos),
                ITEM if length == u32::MAX => pos = self.item_end(data, pos, None, item_implicit(data, pos, implicit), depth + 1)?,
                ITEM => {
                    let end = pos.checked_add(length as usize).filter(|&end| end <= data.len())?;
                    let inner = item_implicit(data, pos, implicit);
                    if length > 0 && self.item_end(data, pos, Some(end), inner, depth + 1)? != end {
                        return None;
                    }
                    pos = end;
                }
                _ => return None,
            }
        }
    }

    /// Where an item's elements end: at `limit` (a defined length) or after its delimiter.
    fn item_end(&self, data: &[u8], mut pos: usize, limit: Option<usize>, implicit: bool, depth: usize) -> Option<usize> {
        loop {
            if let Some(limit) = limit {
                if pos == limit {
                    return Some(pos);
                }
            }
            let tag = tag_at(data, pos)?;
            if data.len() < pos + 8 {
                return None;
            }
            if tag == ITEM_END {
                return limit.is_none().then_some(pos + 8);
            }
            if tag >> 16 == 0xFFFE {
                return None;
            }
            let (vr, length, header) = if implicit {
                (None, u32_at(data, pos + 4), 8)
            } else {
                let vr = Vr::parse(&data[pos + 4..pos + 6])?;
                if vr.long_length() {
                    if data.len() < pos + 12 {
                        return None;
                    }
                    (Some(vr), u32_at(data, pos + 8), 12)
                } else {
                    (Some(vr), u16_at(data, pos + 6) as u32, 8)
                }
            };
            pos = if length == u32::MAX {
                self.undefined_end(data, pos + header, tag, vr, implicit, depth)?
            } else {
                (pos + header).checked_add(length as usize).filter(|&end| end <= data.len())?
            };
            if limit.is_some_and(|limit| pos > limit) {
                return None;
            }
        }
    }
}

impl Header {
    /// Is this element a sequence the core reads: SQ in Explicit VR, the dictionary's SQ in Implicit VR.
    fn is_sequence(&self, tag: u32, vr: Option<Vr>) -> bool {
        match vr {
            Some(vr) => vr == Vr::SQ,
            None => self.sequences.contains(&tag),
        }
    }

    /// A sequence's DICOM JSON and where it ends, as describe.dataset_json gives it (its items read
    /// by the plain path's rules, with the dataset's character set); None when any element of any
    /// item is not one the core reads (a private element, a character set of the item's own, another
    /// VR, an undefined length of anything but a sequence): the sequence is then handed back whole.
    fn sequence_json<'py>(&self, py: Python<'py>, data: &[u8], at: usize, length: u32, implicit: bool,
                          ascii_text: bool, depth: usize) -> PyResult<Option<(Bound<'py, PyDict>, usize)>> {
        let limit = if length == u32::MAX {
            None
        } else {
            match at.checked_add(length as usize).filter(|&end| end <= data.len()) {
                Some(end) => Some(end),
                None => return Ok(None),
            }
        };
        if depth > MAX_DEPTH {
            return Ok(None);
        }
        let items = PyList::empty(py);
        let mut pos = at;
        loop {
            if limit == Some(pos) {
                break;
            }
            let bound = limit.unwrap_or(data.len());
            if bound < pos + 8 {
                return Ok(None);
            }
            let tag = tag_at(data, pos).expect("8 bytes");
            let item_length = u32_at(data, pos + 4);
            pos += 8;
            if tag == SEQUENCE_END {
                if limit.is_some() || item_length != 0 {
                    return Ok(None);
                }
                break;
            }
            if tag != ITEM {
                return Ok(None);
            }
            let item_limit = if item_length == u32::MAX {
                None
            } else {
                match pos.checked_add(item_length as usize).filter(|&end| end <= bound) {
                    Some(end) => Some(end),
                    None => return Ok(None),
                }
            };
            let inner = item_length == 0 || item_implicit(data, pos, implicit);
            let Some((item, end)) = self.item_json(py, data, pos, item_limit, inner, ascii_text, depth + 1)? else {
                return Ok(None);
            };
            items.append(item)?;
            pos = end;
        }
        let out = PyDict::new(py);
        out.set_item(intern!(py, "vr"), "SQ")?;
        if !items.is_empty() {
            out.set_item(intern!(py, "Value"), items)?;
        }
        Ok(Some((out, pos)))
    }

    /// An item's DICOM JSON and where it ends (at `limit`, a defined length, or after its delimiter).
    #[allow(clippy::too_many_arguments)]
    fn item_json<'py>(&self, py: Python<'py>, data: &[u8], mut pos: usize, limit: Option<usize>, implicit: bool,
                      ascii_text: bool, depth: usize) -> PyResult<Option<(Bound<'py, PyDict>, usize)>> {
        let out = PyDict::new(py);
        let mut previous: Option<u32> = None;
        loop {
            if limit == Some(pos) {
                return Ok(Some((out, pos)));
            }
            let bound = limit.unwrap_or(data.len());
            if bound < pos + 8 {
                return Ok(None);
            }
            let tag = tag_at(data, pos).expect("8 bytes");
            if tag == ITEM_END {
                return Ok(if limit.is_none() { Some((out, pos + 8)) } else { None });
            }
            let group = (tag >> 16) as u16;
            if group == 0xFFFE || group == 0x0002 || group & 1 == 1 || tag == CHARSET || previous.is_some_and(|p| tag <= p) {
                return Ok(None);
            }
            previous = Some(tag);
            let (vr, length, header) = if implicit {
                (None, u32_at(data, pos + 4), 8)
            } else {
                let Some(vr) = Vr::parse(&data[pos + 4..pos + 6]) else { return Ok(None) };
                if vr.long_length() {
                    if bound < pos + 12 {
                        return Ok(None);
                    }
                    (Some(vr), u32_at(data, pos + 8), 12)
                } else {
                    (Some(vr), u16_at(data, pos + 6) as u32, 8)
                }
            };
            let value_at = pos + header;
            if self.is_sequence(tag, vr) {
                let Some((json, end)) = self.sequence_json(py, data, value_at, length, implicit, ascii_text, depth)? else {
                    return Ok(None);
                };
                if end > bound || (length != u32::MAX && Some(end) != value_at.checked_add(length as usize)) {
                    return Ok(None);
                }
                if tag & 0xFFFF != 0 {
                    out.set_item(format!("{tag:08X}"), json)?;
                }
                pos = end;
                continue;
            }
            if length == u32::MAX {
                return Ok(None);
            }
            let Some(end) = value_at.checked_add(length as usize).filter(|&end| end <= bound) else { return Ok(None) };
            pos = end;
            if tag & 0xFFFF == 0 {
                continue; // group lengths are not in the JSON
            }
            let vr = vr.or_else(|| self.implicit_vrs.get(&tag).copied());
            let answer = match vr {
                Some(vr) if vr.plain() && !(implicit && length == 0) => plain_json(py, vr, &data[value_at..end], ascii_text)?,
                _ => None,
            };
            match answer {
                Some(json) => out.set_item(format!("{tag:08X}"), json)?,
                None => return Ok(None),
            }
        }
    }
}

type Read<'py> = (Bound<'py, PyDict>, Option<Bound<'py, PyList>>, Bound<'py, PyBytes>, Vec<String>);

#[pymethods]
impl Header {
    #[new]
    fn new(implicit_vrs: HashMap<u32, String>, sequences: HashSet<u32>) -> PyResult<Self> {
        let mut vrs = HashMap::with_capacity(implicit_vrs.len());
        for (tag, name) in implicit_vrs {
            match Vr::parse(name.as_bytes()) {
                Some(vr) if vr.plain() => vrs.insert(tag, vr),
                _ => return Err(pyo3::exceptions::PyValueError::new_err(format!("not a plain VR: {name}"))),
            };
        }
        Ok(Header { implicit_vrs: vrs, sequences })
    }

    /// Read `data` (the dataset's first bytes; `complete`: all of them) up to Pixel Data.
    ///
    /// `charset_ascii(value)`: for the Specific Character Set's value, whether text of ASCII
    /// bytes reads as ASCII (True, False), or None when pydicom is to read the dataset.
    /// Returns None (pydicom reads the whole dataset) or `(metadata, keys, rest, uids)`:
    /// the DICOM JSON of the elements read here; with `rest` not empty, every key of the
    /// header's JSON in order (`keys`); `rest`, the other elements' bytes in the dataset's
    /// encoding, with the elements pydicom needs to read them; the four UIDs' raw values.
    fn read<'py>(&self, py: Python<'py>, data: &[u8], implicit: bool, complete: bool,
                 charset_ascii: &Bound<'py, PyAny>) -> PyResult<Option<Read<'py>>> {
        let metadata = PyDict::new(py);
        let mut keys: Vec<u32> = Vec::new();
        let mut rest: Vec<(usize, usize)> = Vec::new();
        let mut context: Vec<(usize, usize)> = Vec::new();
        let mut uids: [Option<String>; 4] = Default::default();
        let mut ascii_text = true;
        let mut read_text = false;
        let mut previous: Option<u32> = None;
        // Private Creators seen: Some(span) read here, None handed back
        let mut creators: HashMap<u32, Option<(usize, usize)>> = HashMap::new();
        let mut odd_groups_back: Vec<u16> = Vec::new();
        let mut defined_sequences = false; // read here, of defined length
        let mut clean_pixel_representation = true; // none, or one value pydicom reads
        let mut pos = 0usize;
        let mut elements = 0usize;
        loop {
            if data.len() - pos < 8 {
                if complete {
                    break; // pydicom: fewer than 8 bytes left is the end of the dataset
                }
                return Ok(None);
            }
            let group = u16_at(data, pos);
            let tag = (group as u32) << 16 | u16_at(data, pos + 2) as u32;
            if pos == 0 {
                // pydicom's _is_implicit_vr: what the first element looks like decides
                if looks_explicit(data, 0) == implicit {
                    return Ok(None);
                }
            }
            let (vr, length, header) = if implicit {
                (None, u32_at(data, pos + 4), 8)
            } else {
                let Some(vr) = Vr::parse(&data[pos + 4..pos + 6]) else { return Ok(None) };
                if vr.long_length() {
                    if data.len() - pos < 12 {
                        return Ok(None);
                    }
                    (Some(vr), u32_at(data, pos + 8), 12)
                } else {
                    (Some(vr), u16_at(data, pos + 6) as u32, 8)
                }
            };
            if group >= PIXEL_GROUP && group != 0xFFFE {
                break; // pydicom's stop_when, after the element's header is read
            }
            if group == 0xFFFE || group == 0x0002 || previous.is_some_and(|p| tag <= p) {
                return Ok(None);
            }
            previous = Some(tag);
            let start = pos;
            let value_at = pos + header;
            if length == u32::MAX {
                if UID_TAGS.contains(&tag) || tag == CHARSET || tag & 0xFFFF == 0 {
                    return Ok(None);
                }
                if group & 1 == 0 && self.is_sequence(tag, vr) {
                    if let Some((json, end)) = self.sequence_json(py, data, value_at, length, implicit, ascii_text, 0)? {
                        read_text = true;
                        metadata.set_item(format!("{tag:08X}"), json)?;
                        keys.push(tag);
                        pos = end;
                        elements += 1;
                        continue;
                    }
                }
                // a sequence of undefined length the core does not read: pydicom reads it, from its own bytes
                let Some(end) = self.undefined_end(data, value_at, tag, vr, implicit, 0) else { return Ok(None) };
                rest.push((start, end));
                keys.push(tag);
                pos = end;
                elements += 1;
                continue;
            }
            let Some(end) = value_at.checked_add(length as usize).filter(|&end| end <= data.len()) else {
                return Ok(None);
            };
            pos = end;
            elements += 1;
            let value = &data[value_at..end];
            let key = tag;
            let odd = group & 1 == 1;
            if CONTEXT.contains(&tag) {
                context.push((start, end));
            }
            if tag == PIXEL_REPRESENTATION {
                // pydicom reads it whenever it converts a sequence of defined length: one it cannot
                // read turns such a sequence into UN (describe's reference way)
                clean_pixel_representation = length == 2 && matches!(vr, None | Some(Vr::US) | Some(Vr::SS));
            }
            if tag == CHARSET {
                // pydicom reads it by the VR the file gives (a VR of another kind: its error)
                if read_text || length > BULK_THRESHOLD || !matches!(vr, None | Some(Vr::CS)) {
                    return Ok(None);
                }
                match charset_ascii.call1((PyBytes::new(py, value),))?.extract::<Option<bool>>()? {
                    Some(ascii) => ascii_text = ascii,
                    None => return Ok(None),
                }
            }
            if let Some(i) = UID_TAGS.iter().position(|&t| t == tag) {
                if !matches!(vr, None | Some(Vr::UI)) || !value.is_ascii() || length > BULK_THRESHOLD {
                    return Ok(None);
                }
                uids[i] = Some(std::str::from_utf8(value).expect("ASCII").to_owned());
            }
            if length > BULK_THRESHOLD && tag != CHARSET {
                if group & 1 == 1 && (0x10..=0xFF).contains(&(tag & 0xFFFF)) {
                    return Ok(None); // a Private Creator pydicom defers: what its block becomes is pydicom's
                }
                // deferred by pydicom: a sequence is read (describe._read_long_sequences), the rest is bulk
                let sequence = match vr { Some(vr) => vr == Vr::SQ, None => self.sequences.contains(&tag) };
                if sequence && length <= MAX_SEQUENCE_BYTES {
                    rest.push((start, end));
                    keys.push(key);
                } else if tag & 0xFFFF != 0 {
                    let out = PyDict::new(py);
                    out.set_item(intern!(py, "vr"), vr.map_or("UN", Vr::name))?;
                    out.set_item(intern!(py, "BulkDataURI"), format!("bulk:{tag:08X}"))?;
                    metadata.set_item(format!("{tag:08X}"), out)?;
                    keys.push(key);
                }
                continue;
            }
            let element = tag & 0xFFFF;
            // Private elements (PS3.5 7.8.1) are read as describe reads them when their block's Private
            // Creator, if there is one, is read here too (describe._creator_reads). A private group
            // with a group length, an element of no block, or a creator handed back: all to pydicom.
            let creator = if odd && element >= 0x1000 { Some(tag & 0xFFFF_0000 | element >> 8) } else { None };
            if odd && (element < 0x10 || (element < 0x1000 && element > 0xFF) || odd_groups_back.contains(&group)
                || creator.is_some_and(|c| creators.get(&c).is_some_and(|read| read.is_none()))) {
                if element == 0 {
                    odd_groups_back.push(group);
                }
                if let Some(c) = creator {
                    if let Some(Some(span)) = creators.get(&c) {
                        context.push(*span); // its creator goes with it
                    }
                }
                rest.push((start, end));
                if element != 0 {
                    keys.push(key);
                }
                continue;
            }
            if element == 0 {
                continue; // group lengths are not in the JSON
            }
            keys.push(key);
            let vr = match vr {
                Some(vr) => Some(vr),
                None => self.implicit_vrs.get(&tag).copied(),
            };
            if self.is_sequence(tag, vr) && !odd {
                read_text = true;
                match self.sequence_json(py, data, value_at, length, implicit, ascii_text, 0)? {
                    Some((json, sequence_end)) if sequence_end == end => {
                        defined_sequences = true;
                        metadata.set_item(format!("{tag:08X}"), json)?
                    }
                    _ => rest.push((start, end)),
                }
                continue;
            }
            // Implicit VR: pydicom reads an empty value as None, not bytes
            let answer = match vr {
                Some(vr) if vr.plain() && !(implicit && value.is_empty()) => {
                    read_text |= !matches!(vr, Vr::US | Vr::SS | Vr::UL | Vr::SL | Vr::FL | Vr::FD);
                    plain_json(py, vr, value, ascii_text)?
                }
                _ => None,
            };
            let read = answer.is_some();
            match answer {
                Some(json) => metadata.set_item(format!("{tag:08X}"), json)?,
                None => rest.push((start, end)),
            }
            if odd && element <= 0xFF {
                // a Private Creator: read here (its span kept, for a data element of its block handed
                // back), or handed back (its block's data elements with it)
                creators.insert(tag, read.then_some((start, end)));
            } else if !read {
                if let Some(Some(span)) = creator.and_then(|c| creators.get(&c)) {
                    context.push(*span);
                }
            }
        }
        if elements == 0 || defined_sequences && !clean_pixel_representation {
            return Ok(None);
        }
        let Some(uids) = uids.into_iter().collect::<Option<Vec<String>>>() else { return Ok(None) };
        if rest.is_empty() {
            return Ok(Some((metadata, None, PyBytes::new(py, b""), uids)));
        }
        rest.extend(context);
        rest.sort_unstable();
        rest.dedup();
        let size = rest.iter().map(|(s, e)| e - s).sum();
        let mut bytes = Vec::with_capacity(size);
        for (s, e) in rest {
            bytes.extend_from_slice(&data[s..e]);
        }
        if implicit && looks_explicit(&bytes, 0) {
            return Ok(None); // pydicom would take the elements handed back for Explicit VR
        }
        let order = PyList::empty(py);
        for key in keys {
            order.append(format!("{key:08X}"))?;
        }
        Ok(Some((metadata, Some(order), PyBytes::new(py, &bytes), uids)))
    }
}

#[pymodule]
fn archive_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Header>()?;
    m.add("BULK_THRESHOLD", BULK_THRESHOLD)?;
    Ok(())
}
