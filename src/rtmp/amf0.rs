//! AMF0 (Action Message Format 0), the encoding of RTMP command and data messages: numbers,
//! booleans, strings, objects, ECMA arrays, strict arrays, null and undefined. Decoding is bounded
//! (nesting depth, sizes) so a hostile peer cannot make it recurse or allocate without limit.
//!
//! Specifications: AMF0 specification (Adobe, 2007) §2.2-§2.5 (number, boolean, string, object),
//! §2.7-§2.8 (null, undefined), §2.10-§2.14 (ECMA array, object end, strict array, date, long
//! string).

const MARKER_NUMBER: u8 = 0x00;
const MARKER_BOOLEAN: u8 = 0x01;
const MARKER_STRING: u8 = 0x02;
const MARKER_OBJECT: u8 = 0x03;
const MARKER_NULL: u8 = 0x05;
const MARKER_UNDEFINED: u8 = 0x06;
const MARKER_ECMA_ARRAY: u8 = 0x08;
const MARKER_OBJECT_END: u8 = 0x09;
const MARKER_STRICT_ARRAY: u8 = 0x0a;
const MARKER_DATE: u8 = 0x0b;
const MARKER_LONG_STRING: u8 = 0x0c;

/// Objects nested deeper than this are refused.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Boolean(bool),
    String(String),
    Object(Vec<(String, Value)>),
    Null,
    Undefined,
    EcmaArray(Vec<(String, Value)>),
    StrictArray(Vec<Value>),
    /// Milliseconds since the epoch (the time zone field is ignored).
    Date(f64),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// A property of an object or ECMA array.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(props) | Value::EcmaArray(props) => {
                props.iter().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// `value.get(key)` as a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
}

/// AMF0 data the decoder refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("AMF0: truncated: {needed} bytes needed at offset {offset}, {left} left")]
    Truncated {
        needed: usize,
        offset: usize,
        left: usize,
    },
    #[error("AMF0: nested deeper than 32 levels")]
    TooDeep,
    #[error("AMF0: strict array of {0} items in too little data")]
    ArrayTooLong(usize),
    #[error("AMF0: unsupported type marker 0x{0:02x}")]
    UnsupportedMarker(u8),
}

pub fn encode(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Number(n) => {
            out.push(MARKER_NUMBER);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::Boolean(b) => {
            out.push(MARKER_BOOLEAN);
            out.push(u8::from(*b));
        }
        Value::String(s) => {
            if s.len() > u16::MAX as usize {
                out.push(MARKER_LONG_STRING);
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            } else {
                out.push(MARKER_STRING);
                encode_short_string(s, out);
            }
        }
        Value::Object(props) => {
            out.push(MARKER_OBJECT);
            encode_properties(props, out);
        }
        Value::Null => out.push(MARKER_NULL),
        Value::Undefined => out.push(MARKER_UNDEFINED),
        Value::EcmaArray(props) => {
            out.push(MARKER_ECMA_ARRAY);
            out.extend_from_slice(&(props.len() as u32).to_be_bytes());
            encode_properties(props, out);
        }
        Value::StrictArray(items) => {
            out.push(MARKER_STRICT_ARRAY);
            out.extend_from_slice(&(items.len() as u32).to_be_bytes());
            for v in items {
                encode(v, out);
            }
        }
        Value::Date(ms) => {
            out.push(MARKER_DATE);
            out.extend_from_slice(&ms.to_be_bytes());
            out.extend_from_slice(&0u16.to_be_bytes());
        }
    }
}

/// Encodes values one after another, as in a command message.
pub fn encode_all(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        encode(v, &mut out);
    }
    out
}

fn encode_short_string(s: &str, out: &mut Vec<u8>) {
    // Property names longer than 64 KiB cannot be represented; truncate at a char boundary.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn encode_properties(props: &[(String, Value)], out: &mut Vec<u8>) {
    for (k, v) in props {
        encode_short_string(k, out);
        encode(v, out);
    }
    out.extend_from_slice(&[0, 0, MARKER_OBJECT_END]);
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.data.len() - self.pos < n {
            return Err(DecodeError::Truncated {
                needed: n,
                offset: self.pos,
                left: self.data.len() - self.pos,
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f64(&mut self) -> Result<f64, DecodeError> {
        let b = self.take(8)?;
        Ok(f64::from_be_bytes(b.try_into().unwrap()))
    }

    fn string(&mut self, len: usize) -> Result<String, DecodeError> {
        let b = self.take(len)?;
        // Peers send Latin-1 now and then; keep what is readable rather than failing.
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    fn properties(&mut self, depth: usize) -> Result<Vec<(String, Value)>, DecodeError> {
        let mut props = Vec::new();
        loop {
            let len = self.u16()? as usize;
            if len == 0 {
                // Name "" ends the object when followed by the end marker.
                let marker = self.u8()?;
                if marker == MARKER_OBJECT_END {
                    return Ok(props);
                }
                self.pos -= 1;
                let v = self.value(depth + 1)?;
                props.push((String::new(), v));
                continue;
            }
            let key = self.string(len)?;
            let v = self.value(depth + 1)?;
            props.push((key, v));
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let marker = self.u8()?;
        Ok(match marker {
            MARKER_NUMBER => Value::Number(self.f64()?),
            MARKER_BOOLEAN => Value::Boolean(self.u8()? != 0),
            MARKER_STRING => {
                let len = self.u16()? as usize;
                Value::String(self.string(len)?)
            }
            MARKER_LONG_STRING => {
                let len = self.u32()? as usize;
                Value::String(self.string(len)?)
            }
            MARKER_OBJECT => Value::Object(self.properties(depth)?),
            MARKER_NULL => Value::Null,
            MARKER_UNDEFINED => Value::Undefined,
            MARKER_ECMA_ARRAY => {
                // The count is a hint only; the end marker terminates.
                let _count = self.u32()?;
                Value::EcmaArray(self.properties(depth)?)
            }
            MARKER_STRICT_ARRAY => {
                let count = self.u32()? as usize;
                // Every item takes at least one byte: a count beyond the data is a lie.
                if count > self.data.len() - self.pos {
                    return Err(DecodeError::ArrayTooLong(count));
                }
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Value::StrictArray(items)
            }
            MARKER_DATE => {
                let ms = self.f64()?;
                let _tz = self.u16()?;
                Value::Date(ms)
            }
            other => return Err(DecodeError::UnsupportedMarker(other)),
        })
    }
}

/// Decodes every value in `data` (a command: name, transaction id, command object, arguments).
pub fn decode_all(data: &[u8]) -> Result<Vec<Value>, DecodeError> {
    let mut r = Reader { data, pos: 0 };
    let mut values = Vec::new();
    while r.pos < data.len() {
        values.push(r.value(0)?);
    }
    Ok(values)
}

/// Shorthand for building objects: `obj(&[("app", "live".into())])`.
pub fn obj(props: &[(&str, Value)]) -> Value {
    Value::Object(
        props
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    )
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Number(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Boolean(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_command_bytes() {
        // The start of a connect command as every RTMP client sends it.
        let bytes = encode_all(&["connect".into(), 1.0.into(), obj(&[("app", "live".into())])]);
        let mut expected = vec![0x02, 0x00, 0x07];
        expected.extend_from_slice(b"connect");
        expected.push(0x00);
        expected.extend_from_slice(&1.0f64.to_be_bytes());
        expected.extend_from_slice(&[0x03, 0x00, 0x03]);
        expected.extend_from_slice(b"app");
        expected.extend_from_slice(&[0x02, 0x00, 0x04]);
        expected.extend_from_slice(b"live");
        expected.extend_from_slice(&[0x00, 0x00, 0x09]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn round_trip_every_type() {
        let values = vec![
            Value::Number(-1.5),
            Value::Boolean(true),
            Value::Boolean(false),
            Value::String("ünïcode".into()),
            Value::String("x".repeat(70_000)),
            Value::Null,
            Value::Undefined,
            obj(&[
                ("level", "status".into()),
                ("nested", obj(&[("n", 3.0.into())])),
            ]),
            Value::EcmaArray(vec![
                ("duration".into(), 0.0.into()),
                ("width".into(), 320.0.into()),
            ]),
            Value::StrictArray(vec![1.0.into(), "two".into(), Value::Null]),
            Value::Date(1.7e12),
        ];
        let bytes = encode_all(&values);
        assert_eq!(decode_all(&bytes).unwrap(), values);
    }

    #[test]
    fn lookups() {
        let v = obj(&[("code", "NetStream.Publish.Start".into())]);
        assert_eq!(v.get_str("code"), Some("NetStream.Publish.Start"));
        assert_eq!(v.get_str("level"), None);
        assert_eq!(Value::Null.get("code"), None);
    }

    #[test]
    fn hostile_input_is_an_error() {
        // Truncated number.
        assert!(decode_all(&[0x00, 1, 2]).is_err());
        // String longer than the data.
        assert!(decode_all(&[0x02, 0xff, 0xff, b'a']).is_err());
        // Unknown marker.
        assert!(decode_all(&[0x42]).is_err());
        // Object without end.
        assert!(decode_all(&[0x03, 0x00, 0x01, b'a', 0x05]).is_err());
        // Strict array claiming 4 billion items.
        assert!(decode_all(&[0x0a, 0xff, 0xff, 0xff, 0xff]).is_err());
        // Deep nesting.
        let mut deep = Vec::new();
        for _ in 0..100 {
            deep.extend_from_slice(&[0x03, 0x00, 0x01, b'a']);
        }
        deep.push(0x05);
        assert!(decode_all(&deep).is_err());
    }
}
