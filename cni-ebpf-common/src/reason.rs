//! Stable verdict reasons. A code is numbered once and never reused: the
//! counters map is indexed by it, the CLI prints it, dashboards key on it.
//! Add new codes at the end of a range; retire a code by leaving a gap.

/// A verdict reason code (index into [`crate::maps::REASON_COUNTERS`]).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reason(pub u32);

impl Reason {
    // 1..=31: the XDP prefilter.
    /// IPv4/IPv6 packet that matched no prefilter rule.
    pub const PREFILTER_PASS_NO_MATCH: Reason = Reason(1);
    /// Not IPv4/IPv6 (ARP, LLDP, ...): the prefilter has no rules for it.
    pub const PREFILTER_PASS_NOT_IP: Reason = Reason(2);
    /// A CIDR rule with action `allow` was the most specific match.
    pub const PREFILTER_PASS_CIDR_ALLOW: Reason = Reason(3);
    /// A protocol rule with action `allow` matched.
    pub const PREFILTER_PASS_PROTO_ALLOW: Reason = Reason(4);
    /// A protocol rule (e.g. ICMP echo) dropped the packet.
    pub const PREFILTER_DROP_PROTO: Reason = Reason(10);
    /// The source address fell in a denied CIDR.
    pub const PREFILTER_DROP_CIDR: Reason = Reason(11);
    /// Truncated or malformed headers (short Ethernet, IHL < 5, IP header
    /// past the end of the frame). The stack would discard them anyway.
    pub const PREFILTER_DROP_MALFORMED: Reason = Reason(12);
    /// An IPv6 extension header chain longer than the datapath walks
    /// (`MAX_IPV6_EXT_HEADERS`). Dropped: passing it would let a packet hide
    /// its L4 header from port and ICMP-type rules (Cilium drops these too,
    /// DROP_INVALID_EXTHDR).
    pub const PREFILTER_DROP_IPV6_EXT_CHAIN: Reason = Reason(13);

    // 32..=47: passes of the tc programs on pod veths.
    /// `from_pod` saw a packet and passed it.
    pub const FROM_POD_PASS: Reason = Reason(32);
    /// `to_pod` saw a packet and passed it.
    pub const TO_POD_PASS: Reason = Reason(33);
    /// `from_pod` saw a non-IP frame (ARP, ...) and passed it.
    pub const FROM_POD_PASS_NOT_IP: Reason = Reason(34);
    /// `to_pod` saw a non-IP frame and passed it.
    pub const TO_POD_PASS_NOT_IP: Reason = Reason(35);
    /// `from_pod` saw malformed headers, or an IPv6 extension chain longer
    /// than the parser walks; passed for now (no policy yet), the stack
    /// discards what it cannot parse.
    pub const FROM_POD_MALFORMED: Reason = Reason(36);
    /// `to_pod` saw malformed headers; passed for now.
    pub const TO_POD_MALFORMED: Reason = Reason(37);

    /// `from_pod` saw an IP packet whose source is no endpoint's address
    /// (spoofed, or the endpoint entry is missing); passed for now.
    pub const FROM_POD_UNKNOWN_SOURCE: Reason = Reason(38);

    /// `from_pod`: a packet of a flow conntrack already allowed.
    pub const FROM_POD_PASS_CT: Reason = Reason(39);
    /// `to_pod`: a packet of a flow conntrack already allowed.
    pub const TO_POD_PASS_CT: Reason = Reason(40);
    /// `from_pod`: a new flow allowed by policy (or by no isolation).
    pub const FROM_POD_PASS_POLICY: Reason = Reason(41);
    /// `to_pod`: a new flow allowed by policy (or by no isolation).
    pub const TO_POD_PASS_POLICY: Reason = Reason(42);
    /// `to_pod`: from the node itself, allowed as configured (probes).
    pub const TO_POD_PASS_HOST: Reason = Reason(43);
    /// `from_pod`: IPv6 neighbour discovery or MLD (ICMPv6 130-137, 143):
    /// link-local plumbing like ARP, outside NetworkPolicy.
    pub const FROM_POD_PASS_NEIGHBOR_DISCOVERY: Reason = Reason(44);
    /// `to_pod`: IPv6 neighbour discovery or MLD, as above.
    pub const TO_POD_PASS_NEIGHBOR_DISCOVERY: Reason = Reason(45);
    /// `to_pod`, enforcing: an ICMP error about a flow conntrack allowed
    /// (fragmentation needed / packet too big for path MTU discovery, time
    /// exceeded, unreachable), judged with the flow, not as a new flow.
    pub const TO_POD_PASS_RELATED: Reason = Reason(47);

    // 48..=63: drops of the tc programs on pod veths.
    /// `from_pod`: the sending pod's egress policy denies the flow.
    pub const FROM_POD_DROP_EGRESS_POLICY: Reason = Reason(48);
    /// `from_pod`: the local destination pod's ingress policy denies it.
    pub const FROM_POD_DROP_INGRESS_POLICY: Reason = Reason(49);
    /// `to_pod`: the destination pod's ingress policy denies the flow.
    pub const TO_POD_DROP_INGRESS_POLICY: Reason = Reason(50);
    /// `from_pod`: the sender's policy is not programmed yet (fail-closed).
    pub const FROM_POD_DROP_NOT_PROGRAMMED: Reason = Reason(51);
    /// `from_pod`: source address is not the pod's (spoofed), enforcing.
    pub const FROM_POD_DROP_SPOOFED: Reason = Reason(52);
    /// `to_pod`: the destination's policy is not programmed yet.
    pub const TO_POD_DROP_NOT_PROGRAMMED: Reason = Reason(53);
    /// `from_pod`, enforcing: an IPv6 extension chain longer than the
    /// parser walks; its ports cannot be checked, so it cannot pass policy.
    pub const FROM_POD_DROP_IPV6_EXT_CHAIN: Reason = Reason(54);
    /// `to_pod`, enforcing: likewise.
    pub const TO_POD_DROP_IPV6_EXT_CHAIN: Reason = Reason(55);
    /// `to_pod`: the reply of a flow this pod started, which the pod's
    /// egress policy no longer allows (after a policy change).
    pub const TO_POD_DROP_EGRESS_POLICY: Reason = Reason(56);

    // 64..=95: how eBPF host routing forwarded a packet the verdict above
    // passed. A second dimension, counted in addition to the verdict, only
    // for endpoints with eBPF host routing (and on uplinks).
    /// `from_pod`: delivered into a local pod's namespace with
    /// `bpf_redirect_peer` (no host stack).
    pub const FORWARD_REDIRECT_PEER: Reason = Reason(64);
    /// `from_pod`: sent out the device the FIB lookup chose, to the
    /// neighbour it resolved (`bpf_redirect`).
    pub const FORWARD_REDIRECT_FIB: Reason = Reason(65);
    /// `from_pod`: the FIB had a route but no resolved neighbour; sent with
    /// `bpf_redirect_neigh`, which resolves it.
    pub const FORWARD_REDIRECT_NEIGH: Reason = Reason(66);
    /// `from_pod`: handed to the host stack because the destination is the
    /// node itself or the FIB found no forwarding route (the stack answers
    /// or sends the ICMP error).
    pub const FORWARD_STACK_NO_ROUTE: Reason = Reason(67);
    /// `from_pod`/`from_uplink`: TTL or hop limit would expire; the stack
    /// sends the ICMP time-exceeded.
    pub const FORWARD_STACK_TTL: Reason = Reason(68);
    /// `from_pod`: larger than the egress MTU; the stack fragments or sends
    /// the ICMP "fragmentation needed" / "packet too big".
    pub const FORWARD_STACK_FRAG_NEEDED: Reason = Reason(69);
    /// `from_pod`: the endpoint masquerades (`ipMasq`), so traffic leaving
    /// the pod network takes the stack's nftables NAT.
    pub const FORWARD_STACK_MASQUERADE: Reason = Reason(70);
    /// `from_uplink`: a packet for a local pod redirected from the uplink's
    /// ingress to the pod's veth (`to_pod` still judges it).
    pub const FORWARD_UPLINK_TO_POD: Reason = Reason(71);

    /// Every code in use, with its stable name, for the CLI and metrics.
    pub const ALL: [(Reason, &'static str); 40] = [
        (Self::PREFILTER_PASS_NO_MATCH, "prefilter-pass-no-match"),
        (Self::PREFILTER_PASS_NOT_IP, "prefilter-pass-not-ip"),
        (Self::PREFILTER_PASS_CIDR_ALLOW, "prefilter-pass-cidr-allow"),
        (
            Self::PREFILTER_PASS_PROTO_ALLOW,
            "prefilter-pass-proto-allow",
        ),
        (Self::PREFILTER_DROP_PROTO, "prefilter-drop-proto"),
        (Self::PREFILTER_DROP_CIDR, "prefilter-drop-cidr"),
        (Self::PREFILTER_DROP_MALFORMED, "prefilter-drop-malformed"),
        (
            Self::PREFILTER_DROP_IPV6_EXT_CHAIN,
            "prefilter-drop-ipv6-ext-chain",
        ),
        (Self::FROM_POD_PASS, "from-pod-pass"),
        (Self::TO_POD_PASS, "to-pod-pass"),
        (Self::FROM_POD_PASS_NOT_IP, "from-pod-pass-not-ip"),
        (Self::TO_POD_PASS_NOT_IP, "to-pod-pass-not-ip"),
        (Self::FROM_POD_MALFORMED, "from-pod-malformed"),
        (Self::TO_POD_MALFORMED, "to-pod-malformed"),
        (Self::FROM_POD_UNKNOWN_SOURCE, "from-pod-unknown-source"),
        (Self::FROM_POD_PASS_CT, "from-pod-pass-ct"),
        (Self::TO_POD_PASS_CT, "to-pod-pass-ct"),
        (Self::FROM_POD_PASS_POLICY, "from-pod-pass-policy"),
        (Self::TO_POD_PASS_POLICY, "to-pod-pass-policy"),
        (Self::TO_POD_PASS_HOST, "to-pod-pass-host"),
        (
            Self::FROM_POD_PASS_NEIGHBOR_DISCOVERY,
            "from-pod-pass-neighbor-discovery",
        ),
        (
            Self::TO_POD_PASS_NEIGHBOR_DISCOVERY,
            "to-pod-pass-neighbor-discovery",
        ),
        (
            Self::FROM_POD_DROP_EGRESS_POLICY,
            "from-pod-drop-egress-policy",
        ),
        (
            Self::FROM_POD_DROP_INGRESS_POLICY,
            "from-pod-drop-ingress-policy",
        ),
        (
            Self::TO_POD_DROP_INGRESS_POLICY,
            "to-pod-drop-ingress-policy",
        ),
        (
            Self::FROM_POD_DROP_NOT_PROGRAMMED,
            "from-pod-drop-not-programmed",
        ),
        (Self::FROM_POD_DROP_SPOOFED, "from-pod-drop-spoofed"),
        (
            Self::TO_POD_DROP_NOT_PROGRAMMED,
            "to-pod-drop-not-programmed",
        ),
        (
            Self::FROM_POD_DROP_IPV6_EXT_CHAIN,
            "from-pod-drop-ipv6-ext-chain",
        ),
        (
            Self::TO_POD_DROP_IPV6_EXT_CHAIN,
            "to-pod-drop-ipv6-ext-chain",
        ),
        (Self::TO_POD_DROP_EGRESS_POLICY, "to-pod-drop-egress-policy"),
        (Self::TO_POD_PASS_RELATED, "to-pod-pass-related"),
        (Self::FORWARD_REDIRECT_PEER, "forward-redirect-peer"),
        (Self::FORWARD_REDIRECT_FIB, "forward-redirect-fib"),
        (Self::FORWARD_REDIRECT_NEIGH, "forward-redirect-neigh"),
        (Self::FORWARD_STACK_NO_ROUTE, "forward-stack-no-route"),
        (Self::FORWARD_STACK_TTL, "forward-stack-ttl"),
        (Self::FORWARD_STACK_FRAG_NEEDED, "forward-stack-frag-needed"),
        (Self::FORWARD_STACK_MASQUERADE, "forward-stack-masquerade"),
        (Self::FORWARD_UPLINK_TO_POD, "forward-uplink-to-pod"),
    ];
    /// The stable name of a code, `None` for codes not (or no longer) in use.
    pub fn name(self) -> Option<&'static str> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i].0 .0 == self.0 {
                return Some(Self::ALL[i].1);
            }
            i += 1;
        }
        None
    }

    /// Whether this verdict drops the packet: codes 10..=31 (prefilter)
    /// and 48..=63 (pod programs) are drops by construction.
    pub fn is_drop(self) -> bool {
        (10..=31).contains(&self.0) || (48..=63).contains(&self.0)
    }
}
