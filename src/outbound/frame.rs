//! Outbound WebSocket frames as the server writes them: every frame is
//! built once, header and payload in one shared buffer, so a message fanned
//! out to many connections is framed once, not once per recipient. No I/O
//! here: the session's writer (`session::wire`) sends them.

use bytes::Bytes;

/// Opcode of a text frame.
const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
const OP_PONG: u8 = 0xA;
/// The most payload a control frame may carry (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// One complete, unmasked server-to-client WebSocket frame (FIN set):
/// header and payload in one shared buffer. Cloning shares the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// A text frame. `payload` must be UTF-8 (the caller's encoder ensures it).
    pub fn text(payload: &[u8]) -> Self {
        Self::written(OP_TEXT, |out| out.extend_from_slice(payload))
    }

    /// A binary frame.
    pub fn binary(payload: &[u8]) -> Self {
        Self::written(OP_BINARY, |out| out.extend_from_slice(payload))
    }

    /// A data frame whose payload `write` appends to the buffer it is given
    /// (no copy of an encoded payload). `text`: a text frame (the payload
    /// must be UTF-8), else binary.
    pub fn encoded(text: bool, write: impl FnOnce(&mut Vec<u8>)) -> Self {
        Self::written(if text { OP_TEXT } else { OP_BINARY }, write)
    }

    /// A ping frame without payload.
    pub fn ping() -> Self {
        Frame(Bytes::from_static(&[0x80 | OP_PING, 0]))
    }

    /// The pong answering a ping with `payload` (cut to 125 bytes).
    pub fn pong(payload: &[u8]) -> Self {
        let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
        Self::written(OP_PONG, |out| out.extend_from_slice(payload))
    }

    /// A close frame with a status code and a reason (cut to fit 125 bytes
    /// at a character boundary).
    pub fn close(code: u16, reason: &str) -> Self {
        let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Self::written(OP_CLOSE, |out| {
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(&reason.as_bytes()[..end]);
        })
    }

    /// Every frame is built here: the payload is written behind room for
    /// the longest header, and the header then goes right before it.
    fn written(opcode: u8, write: impl FnOnce(&mut Vec<u8>)) -> Self {
        let mut buf = Vec::with_capacity(MAX_HEADER + 150);
        buf.resize(MAX_HEADER, 0);
        write(&mut buf);
        let (header, n) = header(opcode, buf.len() - MAX_HEADER);
        let start = MAX_HEADER - n;
        buf[start..MAX_HEADER].copy_from_slice(&header[..n]);
        Frame(Bytes::from(buf).slice(start..))
    }

    /// The frame's bytes as they go on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The payload (the bytes after the header).
    #[cfg(test)]
    fn payload(&self) -> &[u8] {
        let b = &self.0;
        let start = match b[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        &b[start..]
    }

    /// The opcode (0x1 text, 0x2 binary, 0x8 close, 0x9 ping, 0xA pong).
    #[cfg(test)]
    fn opcode(&self) -> u8 {
        self.0[0] & 0x0f
    }
}

/// The longest frame header of a server frame (no mask).
const MAX_HEADER: usize = 10;

/// The header of an unmasked final frame: its bytes and their count.
fn header(opcode: u8, len: usize) -> ([u8; MAX_HEADER], usize) {
    let mut h = [0u8; MAX_HEADER];
    h[0] = 0x80 | opcode;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_form() {
        let small = Frame::text(b"hi");
        assert_eq!(small.as_bytes(), &[0x81, 2, b'h', b'i']);
        assert_eq!(small.payload(), b"hi");
        assert_eq!(small.opcode(), OP_TEXT);

        let mid = Frame::binary(&[7u8; 300]);
        assert_eq!(&mid.as_bytes()[..4], &[0x82, 126, 1, 44]);
        assert_eq!(mid.payload().len(), 300);

        let big = Frame::text(&vec![b'a'; 70_000]);
        assert_eq!(&big.as_bytes()[..2], &[0x81, 127]);
        assert_eq!(&big.as_bytes()[2..10], &70_000u64.to_be_bytes());
        assert_eq!(big.payload().len(), 70_000);
    }

    #[test]
    fn frames_encoded_in_place_match_copied_ones() {
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let in_place = Frame::encoded(true, |out| out.extend_from_slice(&payload));
            assert_eq!(in_place, Frame::text(&payload), "{len} bytes");
            let binary = Frame::encoded(false, |out| out.extend_from_slice(&payload));
            assert_eq!(binary, Frame::binary(&payload), "{len} bytes");
        }
    }

    #[test]
    fn control_frames_fit_125_bytes() {
        assert_eq!(Frame::ping().as_bytes(), &[0x89, 0]);
        assert_eq!(Frame::pong(&[1u8; 200]).payload().len(), 125);
        let close = Frame::close(4000, &"é".repeat(100));
        assert_eq!(close.opcode(), OP_CLOSE);
        assert_eq!(&close.payload()[..2], &4000u16.to_be_bytes());
        let reason = std::str::from_utf8(&close.payload()[2..]).expect("cut at a char boundary");
        assert!(reason.len() <= 123 && reason.chars().all(|c| c == 'é'));
    }
}
