//! Just enough DNS (RFC 1035) for the lab's resolvers and their tests: a
//! [`Zone`] of one name answers a query with that name's A or AAAA record,
//! NODATA for its other types and NXDOMAIN for every other name; [`query`]
//! and [`parse_response`] are the client side the self-tests use.
//!
//! A response echoes the query's id, opcode, RD bit and question (as sent,
//! letter case included) and carries at most one answer, whose name is a
//! pointer to the question. Additional records in a query (EDNS) are
//! ignored and not echoed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;

const HEADER_LEN: usize = 12;
const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const OPCODE_MASK: u16 = 0x7800;
/// The answer's name: a compression pointer to offset 12, the question's.
const NAME_POINTER: [u8; 2] = [0xc0, 0x0c];
const TTL_SECS: u32 = 60;

/// One name and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Lower case, no trailing dot, e.g. `example.test`.
    pub name: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// A query's question, its name in lower case without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

impl std::fmt::Display for Question {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.qtype {
            TYPE_A => write!(f, "{} A", self.name),
            TYPE_AAAA => write!(f, "{} AAAA", self.name),
            t => write!(f, "{} type{t}", self.name),
        }
    }
}

/// What a response said, as [`parse_response`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub id: u16,
    pub rcode: u8,
    /// The A and AAAA records of the answer section.
    pub addrs: Vec<IpAddr>,
}

impl Zone {
    /// The response to `query` and the question it asked (`None` for a
    /// FORMERR or NOTIMP answer), or `None` when `query` deserves no
    /// answer at all: shorter than a header, or itself a response.
    pub fn respond(&self, query: &[u8]) -> Option<(Vec<u8>, Option<Question>)> {
        let header = query.get(..HEADER_LEN)?;
        let flags = u16::from_be_bytes([header[2], header[3]]);
        if flags & FLAG_QR != 0 {
            return None;
        }
        if flags & OPCODE_MASK != 0 {
            return Some((error_response(header, RCODE_NOTIMP), None));
        }
        let qdcount = u16::from_be_bytes([header[4], header[5]]);
        let parsed = (qdcount == 1)
            .then(|| parse_question(query, HEADER_LEN))
            .flatten();
        let Some((question, end)) = parsed else {
            return Some((error_response(header, RCODE_FORMERR), None));
        };
        let answer = self.answer(&question);
        let rcode = if question.name == self.name {
            RCODE_NOERROR
        } else {
            RCODE_NXDOMAIN
        };
        let mut out = response_header(header, rcode, 1, u16::from(answer.is_some()));
        out.extend_from_slice(&query[HEADER_LEN..end]);
        if let Some((rtype, rdata)) = answer {
            out.extend_from_slice(&NAME_POINTER);
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&TTL_SECS.to_be_bytes());
            let len = u16::try_from(rdata.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&rdata);
        }
        Some((out, Some(question)))
    }

    /// The record answering `q` (type and data), if the zone has one.
    fn answer(&self, q: &Question) -> Option<(u16, Vec<u8>)> {
        if q.name != self.name || q.qclass != CLASS_IN {
            return None;
        }
        match q.qtype {
            TYPE_A => Some((TYPE_A, self.v4.octets().to_vec())),
            TYPE_AAAA => Some((TYPE_AAAA, self.v6.octets().to_vec())),
            _ => None,
        }
    }
}

/// A header answering `query_header`: same id, opcode and RD; QR, AA, RA.
fn response_header(query_header: &[u8], rcode: u8, qdcount: u16, ancount: u16) -> Vec<u8> {
    let qflags = u16::from_be_bytes([query_header[2], query_header[3]]);
    let flags =
        FLAG_QR | (qflags & (OPCODE_MASK | FLAG_RD)) | FLAG_AA | FLAG_RA | u16::from(rcode & 0x0f);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query_header[..2]);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&qdcount.to_be_bytes());
    out.extend_from_slice(&ancount.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// A header-only response carrying `rcode`.
fn error_response(query_header: &[u8], rcode: u8) -> Vec<u8> {
    response_header(query_header, rcode, 0, 0)
}

/// The question at `at`, and the offset just past it. Queries carry no
/// compression pointers; a name over 255 bytes, a label over 63 or a
/// message that ends early is malformed.
fn parse_question(msg: &[u8], at: usize) -> Option<(Question, usize)> {
    let (labels, mut pos) = read_labels(msg, at)?;
    let name = labels.join(".").to_ascii_lowercase();
    let fixed = msg.get(pos..pos + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    pos += 4;
    Some((
        Question {
            name,
            qtype,
            qclass,
        },
        pos,
    ))
}

/// The uncompressed name at `at` as labels, and the offset past its end.
fn read_labels(msg: &[u8], mut at: usize) -> Option<(Vec<String>, usize)> {
    let mut labels = Vec::new();
    let mut wire_len = 0usize;
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        wire_len += len + 1;
        if len == 0 {
            break;
        }
        if len > 63 || wire_len > 255 {
            return None;
        }
        let label = msg.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += len;
    }
    Some((labels, at))
}

/// Skips the name at `at`, compressed or not; the offset past it.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2).filter(|&e| e <= msg.len()),
            l if l <= 63 => at += 1 + usize::from(l),
            _ => return None,
        }
    }
}

/// A standard query (RD set) for `name`'s records of type `qtype`.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&FLAG_RD.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        let len = u8::try_from(label.len()).unwrap_or(u8::MAX);
        out.push(len);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// Reads a response: id, rcode and the A and AAAA records it answers with.
pub fn parse_response(msg: &[u8]) -> anyhow::Result<Response> {
    let bad = || anyhow::anyhow!("malformed DNS response ({} bytes)", msg.len());
    let header = msg.get(..HEADER_LEN).ok_or_else(bad)?;
    let id = u16::from_be_bytes([header[0], header[1]]);
    let flags = u16::from_be_bytes([header[2], header[3]]);
    anyhow::ensure!(flags & FLAG_QR != 0, "not a DNS response (QR clear)");
    let qdcount = u16::from_be_bytes([header[4], header[5]]);
    let ancount = u16::from_be_bytes([header[6], header[7]]);
    let mut at = HEADER_LEN;
    for _ in 0..qdcount {
        at = skip_name(msg, at).ok_or_else(bad)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..ancount {
        at = skip_name(msg, at).ok_or_else(bad)?;
        let fixed = msg.get(at..at + 10).ok_or_else(bad)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let rdlength = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        at += 10;
        let rdata = msg.get(at..at + rdlength).ok_or_else(bad)?;
        at += rdlength;
        if let Ok(a) = <[u8; 4]>::try_from(rdata) {
            if rtype == TYPE_A {
                addrs.push(IpAddr::from(a));
            }
        } else if let Ok(a) = <[u8; 16]>::try_from(rdata) {
            if rtype == TYPE_AAAA {
                addrs.push(IpAddr::from(a));
            }
        }
    }
    Ok(Response {
        id,
        rcode: (flags & 0x0f) as u8,
        addrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        Zone {
            name: "example.test".into(),
            v4: Ipv4Addr::new(203, 0, 113, 1),
            v6: "2001:db8:1::1".parse().expect("v6"),
        }
    }

    /// `example.test`, as labels on the wire.
    const NAME: &[u8] = b"\x07example\x04test\x00";

    /// A query as a resolver sends it: id, RD, one question.
    fn hand_query(id: [u8; 2], name: &[u8], qtype: u16) -> Vec<u8> {
        let mut q = vec![id[0], id[1], 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(name);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    #[test]
    fn an_a_query_gets_one_answer_pointing_at_the_question() {
        let q = hand_query([0xbe, 0xef], NAME, TYPE_A);
        let (r, question) = zone().respond(&q).expect("answered");
        let mut want = vec![
            0xbe, 0xef, // id
            0x85, 0x80, // QR AA RD RA, NOERROR
            0, 1, 0, 1, 0, 0, 0, 0,
        ];
        want.extend_from_slice(NAME);
        want.extend_from_slice(&[0, 1, 0, 1]);
        want.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 203, 0, 113, 1]);
        assert_eq!(r, want);
        let question = question.expect("question");
        assert_eq!(question.to_string(), "example.test A");
    }

    #[test]
    fn an_aaaa_query_gets_the_v6_address() {
        let q = hand_query([0, 7], NAME, TYPE_AAAA);
        let (r, _) = zone().respond(&q).expect("answered");
        assert_eq!(&r[6..8], &[0, 1], "ancount");
        let tail = &r[r.len() - 18..];
        assert_eq!(&tail[..2], &[0, 16], "rdlength");
        assert_eq!(
            &tail[2..],
            &[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        let parsed = parse_response(&r).expect("parses");
        assert_eq!(
            parsed.addrs,
            vec!["2001:db8:1::1".parse::<IpAddr>().expect("ip")]
        );
    }

    #[test]
    fn the_name_matches_in_any_case_and_the_question_is_echoed_as_sent() {
        let name = b"\x07ExAmPlE\x04TEST\x00";
        let q = hand_query([1, 2], name, TYPE_A);
        let (r, question) = zone().respond(&q).expect("answered");
        assert_eq!(&r[12..12 + name.len()], name);
        assert_eq!(question.expect("question").name, "example.test");
        assert_eq!(r[3] & 0x0f, RCODE_NOERROR);
    }

    #[test]
    fn another_name_is_nxdomain_without_answers() {
        let q = hand_query([0x12, 0x34], b"\x05other\x04test\x00", TYPE_A);
        let (r, question) = zone().respond(&q).expect("answered");
        assert_eq!(&r[..4], &[0x12, 0x34, 0x85, 0x83]);
        assert_eq!(&r[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(r.len(), q.len(), "header and question only");
        assert_eq!(question.expect("question").name, "other.test");
        let parsed = parse_response(&r).expect("parses");
        assert_eq!((parsed.id, parsed.rcode), (0x1234, RCODE_NXDOMAIN));
        assert!(parsed.addrs.is_empty());
    }

    #[test]
    fn another_type_of_the_name_is_nodata() {
        let q = hand_query([0, 1], NAME, 15); // MX
        let (r, _) = zone().respond(&q).expect("answered");
        assert_eq!(r[3] & 0x0f, RCODE_NOERROR);
        assert_eq!(&r[6..8], &[0, 0], "no answer");
    }

    #[test]
    fn additional_records_are_ignored() {
        let mut q = hand_query([0, 9], NAME, TYPE_A);
        q[11] = 1; // arcount: an EDNS OPT record follows
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        let (r, _) = zone().respond(&q).expect("answered");
        assert_eq!(&r[10..12], &[0, 0], "arcount");
        assert_eq!(
            parse_response(&r).expect("parses").addrs,
            vec![IpAddr::from([203, 0, 113, 1])]
        );
    }

    #[test]
    fn malformed_queries_get_formerr_or_nothing() {
        let z = zone();
        assert_eq!(z.respond(&[0; 11]), None, "shorter than a header");
        let mut response = hand_query([0, 1], NAME, TYPE_A);
        response[2] |= 0x80;
        assert_eq!(z.respond(&response), None, "a response is not answered");
        let truncated = &hand_query([5, 6], NAME, TYPE_A)[..20];
        let (r, q) = z.respond(truncated).expect("answered");
        assert_eq!(r, vec![5, 6, 0x85, 0x81, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(q, None);
        let mut two = hand_query([0, 1], NAME, TYPE_A);
        two[5] = 2;
        assert_eq!(
            z.respond(&two).expect("answered").0[3] & 0x0f,
            RCODE_FORMERR
        );
        let long_label = [&[64u8][..], &[b'a'; 64], &[0]].concat();
        let q = hand_query([0, 1], &long_label, TYPE_A);
        assert_eq!(z.respond(&q).expect("answered").0[3] & 0x0f, RCODE_FORMERR);
    }

    #[test]
    fn another_opcode_is_not_implemented() {
        let mut q = hand_query([0, 1], NAME, TYPE_A);
        q[2] |= 0x10; // opcode 2, STATUS
        let (r, _) = zone().respond(&q).expect("answered");
        assert_eq!(&r[2..4], &[0x95, 0x84]);
    }

    #[test]
    fn query_builds_what_a_resolver_sends() {
        assert_eq!(
            query(0xbeef, "example.test.", TYPE_A),
            hand_query([0xbe, 0xef], NAME, TYPE_A)
        );
    }

    #[test]
    fn parse_response_rejects_queries_and_short_messages() {
        assert!(parse_response(&query(1, "example.test", TYPE_A)).is_err());
        assert!(parse_response(&[0x80; 5]).is_err());
        let (mut r, _) = zone()
            .respond(&hand_query([0, 1], NAME, TYPE_A))
            .expect("answered");
        r.truncate(r.len() - 1);
        assert!(parse_response(&r).is_err(), "rdata cut short");
    }
}
