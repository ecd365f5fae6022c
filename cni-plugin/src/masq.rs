//! `ipMasq`: masquerade (SNAT to the outgoing interface's address) of pod
//! traffic leaving the pod's network, in nftables rules Sluice owns, spoken
//! directly over `NETLINK_NETFILTER` (no `nft` or `iptables` binary, no C
//! library).
//!
//! Layout, in the namespace of the calling thread (the node's):
//!
//! ```text
//! table inet sluice {
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr 10.22.0.5 ip daddr != 10.22.0.0/24 ip daddr != 224.0.0.0/4 masquerade comment "sluice 00f3a2c19b7d4e51 mynet c1"
//!         ip6 saddr fd00::5 ip6 daddr != fd00::/64 ip6 daddr != ff00::/8 masquerade comment "sluice 00f3a2c19b7d4e51 mynet c1"
//!     }
//! }
//! ```
//!
//! (that is how `nft list ruleset` prints what this module writes; each
//! rule also starts with `meta nfproto ipv4|ipv6`, which nft leaves out.)
//!
//! One rule per pod address: traffic from the pod to anything outside its
//! subnet (and not multicast) is masqueraded, as the reference plugins'
//! `ipMasq` does. The comment starts with `sluice <endpoint id>` (16 hex
//! digits, [`crate::state::endpoint_id`]) and then names the network and
//! container; rules are found by that prefix, so DEL needs no state. ADD
//! replaces the endpoint's rules; DEL removes them and then the chain and
//! table when no rule is left. Every change is one nf_tables batch (a
//! transaction): removing the chain and table fails with `EBUSY`, and so
//! changes nothing, when another plugin invocation added a rule meanwhile.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;
use rtnetlink::sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::error::{CniError, CniResult};

/// The table (family `inet`).
pub const TABLE: &str = "sluice";
/// The base chain.
pub const CHAIN: &str = "postrouting";
/// Longest comment nft shows (its `NFT_USERDATA_MAXLEN` is 256; nft limits
/// comments to 128 bytes including the NUL).
const MAX_COMMENT: usize = 127;

// linux/netfilter/nfnetlink.h, nf_tables.h, netfilter.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NF_INET_POST_ROUTING: u32 = 4;
/// `NF_IP_PRI_NAT_SRC`, nft's `srcnat`.
const NAT_SRC_PRIORITY: i32 = 100;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_NFPROTO: u32 = 15;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_REG_1: u32 = 1;
/// libnftnl's `NFTNL_UDATA_RULE_COMMENT`: the TLV nft reads comments from.
const UDATA_RULE_COMMENT: u8 = 0;

const NLA_F_NESTED: u16 = 0x8000;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_APPEND: u16 = 0x800;
/// On NFT_MSG_DELCHAIN/DELTABLE: fail with `EBUSY` when the chain still has
/// rules (the table still has chains) instead of deleting them with it
/// (`nf_tables_delchain`, `nf_tables_deltable`).
const NLM_F_NONREC: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// One masqueraded pod address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasqEntry {
    /// The pod address with its subnet's prefix length, as IPAM gave it
    /// (e.g. 10.22.0.5/24): traffic to that subnet is not masqueraded.
    pub addr: IpNet,
}

/// A rule as read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasqRule {
    /// nf_tables rule handle.
    pub handle: u64,
    /// Its comment.
    pub comment: String,
}

/// How often a rule dump interrupted by concurrent changes is started over
/// (each attempt is one short dump; 16 parallel ADD/DELs interrupt a few).
const DUMP_ATTEMPTS: usize = 32;

/// The comment prefix of an endpoint's rules.
pub fn comment_prefix(endpoint_id: u64) -> String {
    format!("sluice {endpoint_id:016x} ")
}

fn comment(endpoint_id: u64, network: &str, container_id: &str) -> String {
    let mut c = format!("{}{network} {container_id}", comment_prefix(endpoint_id));
    if c.len() > MAX_COMMENT {
        let mut cut = MAX_COMMENT;
        while !c.is_char_boundary(cut) {
            cut -= 1;
        }
        c.truncate(cut);
    }
    c
}

// ---- message building ----------------------------------------------------

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

fn put_str(buf: &mut Vec<u8>, kind: u16, s: &str) {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    put_attr(buf, kind, &v);
}

fn put_u32(buf: &mut Vec<u8>, kind: u16, v: u32) {
    put_attr(buf, kind, &v.to_be_bytes());
}

fn put_nested(buf: &mut Vec<u8>, kind: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    f(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// One netlink message: header, nfgenmsg, attributes.
fn message(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.push(family);
    m.push(0); // NFNETLINK_V0
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(attrs);
    m
}

fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

fn expr(buf: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    put_nested(buf, NFTA_LIST_ELEM, |b| {
        put_str(b, NFTA_EXPR_NAME, name);
        put_nested(b, NFTA_EXPR_DATA, data);
    });
}

fn cmp(buf: &mut Vec<u8>, op: u32, value: &[u8]) {
    expr(buf, "cmp", |b| {
        put_u32(b, NFTA_CMP_SREG, NFT_REG_1);
        put_u32(b, NFTA_CMP_OP, op);
        put_nested(b, NFTA_CMP_DATA, |d| put_attr(d, NFTA_DATA_VALUE, value));
    });
}

fn payload(buf: &mut Vec<u8>, offset: u32, len: u32) {
    expr(buf, "payload", |b| {
        put_u32(b, NFTA_PAYLOAD_DREG, NFT_REG_1);
        put_u32(b, NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
        put_u32(b, NFTA_PAYLOAD_OFFSET, offset);
        put_u32(b, NFTA_PAYLOAD_LEN, len);
    });
}

fn bitwise_and(buf: &mut Vec<u8>, mask: &[u8]) {
    expr(buf, "bitwise", |b| {
        put_u32(b, NFTA_BITWISE_SREG, NFT_REG_1);
        put_u32(b, NFTA_BITWISE_DREG, NFT_REG_1);
        put_u32(b, NFTA_BITWISE_LEN, mask.len() as u32);
        put_nested(b, NFTA_BITWISE_MASK, |d| put_attr(d, NFTA_DATA_VALUE, mask));
        put_nested(b, NFTA_BITWISE_XOR, |d| {
            put_attr(d, NFTA_DATA_VALUE, &vec![0u8; mask.len()])
        });
    });
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The expressions of one rule (see the module docs).
fn rule_exprs(entry: &MasqEntry) -> Vec<u8> {
    let net = entry.addr;
    let v6 = net.addr().is_ipv6();
    let (proto, saddr_off, daddr_off, len) = if v6 {
        (NFPROTO_IPV6, 8, 24, 16)
    } else {
        (NFPROTO_IPV4, 12, 16, 4)
    };
    let (mcast_mask, mcast_net): (Vec<u8>, Vec<u8>) = if v6 {
        let mut m = vec![0u8; 16];
        m[0] = 0xff;
        (m.clone(), m)
    } else {
        (vec![0xf0, 0, 0, 0], vec![0xe0, 0, 0, 0])
    };
    let mut e = Vec::new();
    expr(&mut e, "meta", |b| {
        put_u32(b, NFTA_META_KEY, NFT_META_NFPROTO);
        put_u32(b, NFTA_META_DREG, NFT_REG_1);
    });
    cmp(&mut e, NFT_CMP_EQ, &[proto]);
    payload(&mut e, saddr_off, len);
    cmp(&mut e, NFT_CMP_EQ, &octets(net.addr()));
    payload(&mut e, daddr_off, len);
    bitwise_and(&mut e, &octets(net.netmask()));
    cmp(&mut e, NFT_CMP_NEQ, &octets(net.network()));
    payload(&mut e, daddr_off, len);
    bitwise_and(&mut e, &mcast_mask);
    cmp(&mut e, NFT_CMP_NEQ, &mcast_net);
    expr(&mut e, "masq", |_| {});
    e
}

fn userdata_comment(text: &str) -> Vec<u8> {
    let mut v = text.as_bytes().to_vec();
    v.push(0);
    let mut u = vec![UDATA_RULE_COMMENT, v.len() as u8];
    u.extend_from_slice(&v);
    u
}

// ---- socket --------------------------------------------------------------

struct Nft {
    sock: Socket,
    seq: u32,
}

fn nl_error(what: &str, errno: i32) -> CniError {
    CniError::kernel(format!(
        "nftables: {what}: {}",
        std::io::Error::from_raw_os_error(errno)
    ))
}

impl Nft {
    fn open() -> CniResult<Self> {
        let io = |what: &str, e: std::io::Error| {
            CniError::kernel(format!("nftables socket: {what}: {e}"))
        };
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(|e| io("socket", e))?;
        sock.bind_auto().map_err(|e| io("bind", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| io("connect", e))?;
        // Bound the wait for an answer, so a lost reply cannot hang ADD/DEL.
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: valid fd and a timeval of the right size.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io("SO_RCVTIMEO", std::io::Error::last_os_error()));
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Ok(Self {
            sock,
            seq: seed.subsec_nanos(),
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn recv(&self) -> CniResult<Vec<u8>> {
        self.sock
            .recv_from_full()
            .map(|(buf, _)| buf)
            .map_err(|e| CniError::kernel(format!("nftables: receiving: {e}")))
    }

    /// Sends `msgs` (type, flags, family, attrs) as one batch and waits for
    /// the ack of each. Returns the first error as a negative errno.
    fn batch(&mut self, msgs: &[(u16, u16, u8, Vec<u8>)]) -> CniResult<Result<(), i32>> {
        let mut buf = message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            self.next_seq(),
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        let mut pending = Vec::new();
        for (kind, flags, family, attrs) in msgs {
            let seq = self.next_seq();
            pending.push(seq);
            buf.extend(message(
                nft_type(*kind),
                NLM_F_REQUEST | NLM_F_ACK | flags,
                seq,
                *family,
                0,
                attrs,
            ));
        }
        let end_seq = self.next_seq();
        buf.extend(message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        ));
        self.sock
            .send(&buf, 0)
            .map_err(|e| CniError::kernel(format!("nftables: sending a batch: {e}")))?;
        while !pending.is_empty() {
            let data = self.recv()?;
            for (kind, _flags, seq, body) in parse_messages(&data) {
                if kind != NLMSG_ERROR || body.len() < 4 {
                    continue;
                }
                let code = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                pending.retain(|s| *s != seq);
                if code != 0 {
                    return Ok(Err(-code));
                }
            }
        }
        Ok(Ok(()))
    }

    /// Dumps the rules of the chain (empty when table or chain is missing).
    /// A dump that a concurrent change interrupted is started over: the
    /// kernel flags only the message where it noticed the change (it then
    /// takes the new generation as the reference), so the flag must be
    /// remembered until the end of the dump; a list taken from such a dump
    /// can miss rules, which once made CHECK report a live pod's rule
    /// missing and DEL leave an emptied table behind under 16 parallel
    /// ADD/DELs.
    fn rules(&mut self) -> CniResult<Vec<MasqRule>> {
        'retry: for _ in 0..DUMP_ATTEMPTS {
            let mut attrs = Vec::new();
            put_str(&mut attrs, NFTA_RULE_TABLE, TABLE);
            put_str(&mut attrs, NFTA_RULE_CHAIN, CHAIN);
            let seq = self.next_seq();
            let req = message(
                nft_type(NFT_MSG_GETRULE),
                NLM_F_REQUEST | NLM_F_DUMP,
                seq,
                NFPROTO_INET,
                0,
                &attrs,
            );
            self.sock
                .send(&req, 0)
                .map_err(|e| CniError::kernel(format!("nftables: sending GETRULE: {e}")))?;
            let mut out = Vec::new();
            let mut interrupted = false;
            loop {
                let data = self.recv()?;
                for (kind, flags, mseq, body) in parse_messages(&data) {
                    if mseq != seq {
                        continue;
                    }
                    interrupted |= flags & NLM_F_DUMP_INTR != 0;
                    match kind {
                        // Drained; start over if anything changed meanwhile.
                        NLMSG_DONE if interrupted => continue 'retry,
                        NLMSG_DONE => return Ok(out),
                        NLMSG_ERROR => {
                            let code = if body.len() >= 4 {
                                -i32::from_ne_bytes([body[0], body[1], body[2], body[3]])
                            } else {
                                0
                            };
                            if code == 0 || code == libc::ENOENT {
                                return Ok(out);
                            }
                            return Err(nl_error(
                                &format!("listing rules of inet {TABLE} {CHAIN}"),
                                code,
                            ));
                        }
                        k if k == nft_type(NFT_MSG_NEWRULE) && body.len() >= 4 => {
                            if let Some(rule) = parse_rule(&body[4..]) {
                                out.push(rule);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Err(CniError::kernel(format!(
            "nftables: rule dump interrupted by concurrent changes {DUMP_ATTEMPTS} times"
        )))
    }
}

/// Splits a datagram into (type, flags, seq, payload) per message.
fn parse_messages(data: &[u8]) -> Vec<(u16, u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= data.len() {
        let len = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap_or_default()) as usize;
        if len < 16 || off + len > data.len() {
            break;
        }
        let kind = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
        let flags = u16::from_ne_bytes([data[off + 6], data[off + 7]]);
        let seq = u32::from_ne_bytes(data[off + 8..off + 12].try_into().unwrap_or_default());
        out.push((kind, flags, seq, &data[off + 16..off + len]));
        off += align4(len);
    }
    out
}

/// Attributes (type without flags, payload).
fn parse_attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((kind, &data[4..len]));
        data = &data[align4(len).min(data.len())..];
    }
    out
}

fn parse_rule(attrs: &[u8]) -> Option<MasqRule> {
    let mut handle = None;
    let mut comment = String::new();
    for (kind, value) in parse_attrs(attrs) {
        match kind {
            NFTA_RULE_HANDLE if value.len() == 8 => {
                handle = Some(u64::from_be_bytes(value.try_into().ok()?))
            }
            NFTA_RULE_USERDATA => {
                let mut u = value;
                while u.len() >= 2 {
                    let (t, l) = (u[0], u[1] as usize);
                    if u.len() < 2 + l {
                        break;
                    }
                    if t == UDATA_RULE_COMMENT {
                        comment = String::from_utf8_lossy(&u[2..2 + l])
                            .trim_end_matches('\0')
                            .to_owned();
                    }
                    u = &u[2 + l..];
                }
            }
            _ => {}
        }
    }
    Some(MasqRule {
        handle: handle?,
        comment,
    })
}

fn table_attrs() -> Vec<u8> {
    let mut a = Vec::new();
    put_str(&mut a, NFTA_TABLE_NAME, TABLE);
    a
}

fn chain_attrs(with_hook: bool) -> Vec<u8> {
    let mut a = Vec::new();
    put_str(&mut a, NFTA_CHAIN_TABLE, TABLE);
    put_str(&mut a, NFTA_CHAIN_NAME, CHAIN);
    if with_hook {
        put_nested(&mut a, NFTA_CHAIN_HOOK, |h| {
            put_u32(h, NFTA_HOOK_HOOKNUM, NF_INET_POST_ROUTING);
            put_u32(h, NFTA_HOOK_PRIORITY, NAT_SRC_PRIORITY as u32);
        });
        put_str(&mut a, NFTA_CHAIN_TYPE, "nat");
    }
    a
}

fn del_rule_attrs(handle: u64) -> Vec<u8> {
    let mut a = Vec::new();
    put_str(&mut a, NFTA_RULE_TABLE, TABLE);
    put_str(&mut a, NFTA_RULE_CHAIN, CHAIN);
    put_attr(&mut a, NFTA_RULE_HANDLE, &handle.to_be_bytes());
    a
}

// ---- API -----------------------------------------------------------------

/// The rules in `inet sluice postrouting` of the calling thread's namespace
/// (empty when the table is missing).
pub fn list() -> CniResult<Vec<MasqRule>> {
    Nft::open()?.rules()
}

/// Whether the table `inet sluice` exists.
pub fn table_exists() -> CniResult<bool> {
    let mut nft = Nft::open()?;
    let seq = nft.next_seq();
    let req = message(
        nft_type(NFT_MSG_GETTABLE),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        NFPROTO_INET,
        0,
        &table_attrs(),
    );
    nft.sock
        .send(&req, 0)
        .map_err(|e| CniError::kernel(format!("nftables: sending GETTABLE: {e}")))?;
    loop {
        let data = nft.recv()?;
        for (kind, _, mseq, body) in parse_messages(&data) {
            if mseq != seq {
                continue;
            }
            if kind == NLMSG_ERROR && body.len() >= 4 {
                let code = -i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                return match code {
                    0 => Ok(true),
                    libc::ENOENT => Ok(false),
                    e => Err(nl_error("looking up table inet sluice", e)),
                };
            }
            if kind == nft_type(NFT_MSG_NEWTABLE) {
                return Ok(true);
            }
        }
    }
}

/// Installs the masquerade rules of one endpoint (replacing any it had),
/// creating table and chain when missing. One transaction.
pub fn add(
    network: &str,
    container_id: &str,
    endpoint_id: u64,
    entries: &[MasqEntry],
) -> CniResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut nft = Nft::open()?;
    let prefix = comment_prefix(endpoint_id);
    let old: Vec<u64> = nft
        .rules()?
        .into_iter()
        .filter(|r| r.comment.starts_with(&prefix))
        .map(|r| r.handle)
        .collect();
    let text = comment(endpoint_id, network, container_id);
    let mut msgs = vec![
        (NFT_MSG_NEWTABLE, NLM_F_CREATE, NFPROTO_INET, table_attrs()),
        (
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            NFPROTO_INET,
            chain_attrs(true),
        ),
    ];
    for h in &old {
        msgs.push((NFT_MSG_DELRULE, 0, NFPROTO_INET, del_rule_attrs(*h)));
    }
    for e in entries {
        let mut a = Vec::new();
        put_str(&mut a, NFTA_RULE_TABLE, TABLE);
        put_str(&mut a, NFTA_RULE_CHAIN, CHAIN);
        put_nested(&mut a, NFTA_RULE_EXPRESSIONS, |b| b.extend(rule_exprs(e)));
        put_attr(&mut a, NFTA_RULE_USERDATA, &userdata_comment(&text));
        msgs.push((
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            NFPROTO_INET,
            a,
        ));
    }
    nft.batch(&msgs)?.map_err(|errno| {
        let addrs: Vec<String> = entries.iter().map(|e| e.addr.to_string()).collect();
        nl_error(
            &format!(
                "adding masquerade rules for {} ({})",
                addrs.join(", "),
                text
            ),
            errno,
        )
    })
}

/// Removes the endpoint's rules, then chain and table if no rule is left.
/// Missing rules, chain or table are success. Returns how many rules were
/// removed.
pub fn remove(endpoint_id: u64) -> CniResult<usize> {
    let mut nft = Nft::open()?;
    let rules = nft.rules()?;
    let prefix = comment_prefix(endpoint_id);
    let mine: Vec<u64> = rules
        .iter()
        .filter(|r| r.comment.starts_with(&prefix))
        .map(|r| r.handle)
        .collect();
    if !mine.is_empty() {
        let msgs: Vec<_> = mine
            .iter()
            .map(|h| (NFT_MSG_DELRULE, 0, NFPROTO_INET, del_rule_attrs(*h)))
            .collect();
        match nft.batch(&msgs)? {
            Ok(()) => {}
            // Removed meanwhile by a concurrent DEL of the same endpoint.
            Err(libc::ENOENT) => {}
            Err(e) => {
                return Err(nl_error(
                    &format!("removing masquerade rules of endpoint {endpoint_id:016x}"),
                    e,
                ))
            }
        }
    }
    // Listed again after the removal: two DELs running at once each see
    // the other's rules before removing their own, so a count taken
    // before would leave an empty table behind. The last remover's list
    // is empty (or shows a rule a concurrent ADD just added, which needs
    // the table).
    let left = if mine.is_empty() {
        rules.len()
    } else {
        nft.rules()?.len()
    };
    // Without the table there is nothing to remove, and a lookup says so
    // cheaply: a batch that fails with ENOENT is an aborted nf_tables
    // transaction, about 11 ms here (measured with `cargo xtask bench`),
    // on every DEL of a network without ipMasq (DEL always cleans up: the
    // config may have changed since ADD).
    if left == 0 && (!mine.is_empty() || table_exists()?) {
        // NONREC: without it the kernel deletes chain and table together
        // with every rule in them, also one a concurrent ADD committed
        // after the list above; and rules of a deleted and recreated table
        // get the same handles again, so another DEL's DELRULE by handle
        // could then remove a new pod's rule.
        let msgs = vec![
            (
                NFT_MSG_DELCHAIN,
                NLM_F_NONREC,
                NFPROTO_INET,
                chain_attrs(false),
            ),
            (NFT_MSG_DELTABLE, NLM_F_NONREC, NFPROTO_INET, table_attrs()),
        ];
        match nft.batch(&msgs)? {
            // EBUSY: a rule was added meanwhile, the table is still needed.
            Ok(()) | Err(libc::ENOENT) | Err(libc::EBUSY) => {}
            Err(e) => return Err(nl_error("removing table inet sluice", e)),
        }
    }
    Ok(mine.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_carry_the_endpoint_and_fit() {
        let c = comment(0xab, "net", "c1");
        assert_eq!(c, "sluice 00000000000000ab net c1");
        assert!(c.starts_with(&comment_prefix(0xab)));
        let long = comment(1, &"n".repeat(100), &"c".repeat(64));
        assert_eq!(long.len(), MAX_COMMENT);
        assert!(long.starts_with(&comment_prefix(1)));
        let u = userdata_comment("x");
        assert_eq!(u, [UDATA_RULE_COMMENT, 2, b'x', 0]);
    }

    #[test]
    fn attributes_round_trip() {
        let mut b = Vec::new();
        put_str(&mut b, NFTA_RULE_TABLE, TABLE);
        put_attr(&mut b, NFTA_RULE_HANDLE, &7u64.to_be_bytes());
        put_attr(
            &mut b,
            NFTA_RULE_USERDATA,
            &userdata_comment("sluice 0000000000000007 n c"),
        );
        put_nested(&mut b, NFTA_RULE_EXPRESSIONS, |e| {
            e.extend(rule_exprs(&MasqEntry {
                addr: "10.199.0.5/24".parse().unwrap(),
            }))
        });
        assert_eq!(b.len() % 4, 0);
        let rule = parse_rule(&b).unwrap();
        assert_eq!(
            rule,
            MasqRule {
                handle: 7,
                comment: "sluice 0000000000000007 n c".into()
            }
        );
        let attrs = parse_attrs(&b);
        assert_eq!(attrs.len(), 4);
        let exprs = parse_attrs(attrs[3].1);
        // meta, cmp, payload, cmp, payload, bitwise, cmp, payload, bitwise, cmp, masq
        assert_eq!(exprs.len(), 11);
    }
}
