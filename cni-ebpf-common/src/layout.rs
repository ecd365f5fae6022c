//! Compile-time checks of the ABI: a layout change fails the build here
//! before it can reach a pinned map.

use core::mem::{align_of, offset_of, size_of};

use crate::{Counter, EndpointInfo, EndpointKey, ProtoKey, RuleValue, SourceKey4};

const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!(align_of::<Counter>() == 8);
const _: () = assert!(offset_of!(Counter, bytes) == 8);

const _: () = assert!(size_of::<RuleValue>() == 8);
const _: () = assert!(offset_of!(RuleValue, action) == 4);
const _: () = assert!(offset_of!(RuleValue, origin) == 5);

const _: () = assert!(size_of::<ProtoKey>() == 8);
const _: () = assert!(offset_of!(ProtoKey, protocol) == 1);
const _: () = assert!(offset_of!(ProtoKey, has_selector) == 2);
const _: () = assert!(offset_of!(ProtoKey, selector) == 4);

const _: () = assert!(size_of::<EndpointKey>() == 20);
const _: () = assert!(offset_of!(EndpointKey, addr) == 4);
const _: () = assert!(size_of::<EndpointInfo>() == 32);
const _: () = assert!(size_of::<SourceKey4>() == 8);
const _: () = assert!(offset_of!(SourceKey4, addr) == 4);
const _: () = assert!(offset_of!(EndpointInfo, mac) == 8);
const _: () = assert!(offset_of!(EndpointInfo, host_mac) == 14);
const _: () = assert!(offset_of!(EndpointInfo, endpoint_id) == 24);

const _: () = {
    use crate::policy::*;
    assert!(size_of::<PolicyConfig>() == 8);
    assert!(size_of::<IpcacheEntry>() == 8);
    assert!(size_of::<PolicyState>() == 8);
    assert!(size_of::<PolicyKey>() == 16);
    assert!(offset_of!(PolicyKey, identity) == 8);
    assert!(offset_of!(PolicyKey, direction) == 12);
    assert!(offset_of!(PolicyKey, protocol) == 13);
    assert!(offset_of!(PolicyKey, port) == 14);
    assert!(size_of::<PolicyValue>() == 8);
    assert!(size_of::<PortRanges>() == 8 + 4 * PORT_RANGES_PER_KEY + 4 * PORT_RANGES_PER_KEY);
    assert!(size_of::<CtKey>() == 40);
    assert!(offset_of!(CtKey, sport) == 32);
    assert!(size_of::<Ct4Key>() == 16);
    assert!(offset_of!(Ct4Key, sport) == 8);
    assert!(offset_of!(Ct4Key, protocol) == 12);
    assert!(align_of::<CtKey>() == 8);
    assert!(size_of::<CtEntry>() == 32);
    assert!(size_of::<DropEvent>() == 64);
};

#[cfg(test)]
mod tests {
    use crate::maps::MAP_SPECS;
    use crate::Reason;

    #[test]
    fn reason_codes_are_unique_and_in_range() {
        for (i, (a, name)) in Reason::ALL.iter().enumerate() {
            assert!(a.0 < crate::maps::REASONS_MAX, "{name} out of range");
            assert_eq!(a.name(), Some(*name));
            for (b, other) in &Reason::ALL[i + 1..] {
                assert_ne!(a, b, "{name} and {other} share a code");
                assert_ne!(name, other);
            }
        }
    }

    #[test]
    fn drop_reasons_are_the_drop_range() {
        assert!(Reason::PREFILTER_DROP_PROTO.is_drop());
        assert!(Reason::PREFILTER_DROP_CIDR.is_drop());
        assert!(Reason::PREFILTER_DROP_MALFORMED.is_drop());
        assert!(!Reason::PREFILTER_PASS_NO_MATCH.is_drop());
        assert!(!Reason::FROM_POD_PASS.is_drop());
        assert!(Reason::FROM_POD_DROP_EGRESS_POLICY.is_drop());
        assert!(Reason::TO_POD_DROP_NOT_PROGRAMMED.is_drop());
        assert!(!Reason::TO_POD_PASS_HOST.is_drop());
    }

    #[test]
    fn map_specs_have_unique_names() {
        for (i, a) in MAP_SPECS.iter().enumerate() {
            for b in &MAP_SPECS[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }
}
