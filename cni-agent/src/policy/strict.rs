//! Strict deserialization of Kubernetes objects: refuse fields we do not
//! know, accept (and drop) the Kubernetes fields policy never reads.
//!
//! A typo such as `lables:` or `form:` must not silently widen or narrow a
//! policy, so every type of the model refuses unknown fields. But a Pod as
//! `kubectl get -o yaml` prints it carries dozens of fields policy does not
//! care about (`image`, `volumes`, `managedFields`, …). Each model type
//! therefore lists the *Kubernetes* fields it ignores; those are skipped,
//! everything else goes to the serde-derived deserializer, which has
//! `deny_unknown_fields`.
//!
//! How: the type derives with `#[serde(remote = "Self")]`, which turns the
//! derived code into inherent `Type::deserialize`/`Type::serialize`
//! functions; [`strict!`] then implements the serde traits through a map
//! access that skips the ignored keys (and, in [`ignoring_unknown_fields`]
//! mode, every key the derived code would refuse).

use std::{cell::Cell, fmt, marker::PhantomData};

use serde::de::{
    self, value::StringDeserializer, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer,
    MapAccess, Visitor,
};

thread_local! {
    static LENIENT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with unknown fields ignored instead of refused, on this thread.
///
/// For sources that must accept objects from a newer Kubernetes API server
/// (a watch), where a field added upstream after this list was written is
/// not an error. Manifests written by people are always parsed strictly.
pub fn ignoring_unknown_fields<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            LENIENT.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(LENIENT.with(|l| l.replace(true)));
    f()
}

/// A model type deserialized through [`deserialize`].
pub(crate) trait Strict<'de>: Sized {
    /// Kubernetes fields of this object that policy never reads.
    const IGNORED: &'static [&'static str];
    /// What the object is, for "invalid type" messages.
    const WHAT: &'static str;
    /// The serde-derived deserializer (`remote = "Self"`).
    fn derived<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

/// Deserializes `T` from a map, skipping `T::IGNORED` keys.
pub(crate) fn deserialize<'de, T: Strict<'de>, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    d.deserialize_map(StrictVisitor::<T>(PhantomData))
}

struct StrictVisitor<T>(PhantomData<T>);

impl<'de, T: Strict<'de>> Visitor<'de> for StrictVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::WHAT)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::derived(Fields {
            map,
            ignored: T::IGNORED,
        })
    }
}

/// A deserializer over a map that learns the derived struct's field names
/// (`deserialize_struct`) so that lenient mode can skip the others.
struct Fields<A> {
    map: A,
    ignored: &'static [&'static str],
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for Fields<A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_map(Skipping {
            map: self.map,
            ignored: self.ignored,
            known: None,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let lenient = LENIENT.with(Cell::get);
        visitor.visit_map(Skipping {
            map: self.map,
            ignored: self.ignored,
            known: lenient.then_some(fields),
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// The map with the ignored keys (and their values) left out.
struct Skipping<A> {
    map: A,
    ignored: &'static [&'static str],
    /// In lenient mode, the only keys passed on.
    known: Option<&'static [&'static str]>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Skipping<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.map.next_key::<String>()? else {
                return Ok(None);
            };
            let skip = self.ignored.contains(&key.as_str())
                || self
                    .known
                    .is_some_and(|known| !known.contains(&key.as_str()));
            if skip {
                self.map.next_value::<IgnoredAny>()?;
                continue;
            }
            let key: StringDeserializer<A::Error> = key.into_deserializer();
            return seed.deserialize(key).map(Some);
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// `null` as the default value: Kubernetes treats `ingress:` (null) like an
/// absent field, and so must we.
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: de::Deserialize<'de> + Default,
{
    Ok(<Option<T> as de::Deserialize>::deserialize(d)?.unwrap_or_default())
}

/// Implements `Deserialize` (strict, skipping the listed Kubernetes fields)
/// and `Serialize` for a type deriving both with `#[serde(remote = "Self")]`.
macro_rules! strict {
    ($ty:ty, $what:literal, [$($ignored:literal),* $(,)?]) => {
        impl<'de> $crate::policy::strict::Strict<'de> for $ty {
            const IGNORED: &'static [&'static str] = &[$($ignored),*];
            const WHAT: &'static str = $what;
            fn derived<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <$ty>::deserialize(d)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::policy::strict::deserialize(d)
            }
        }
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                <$ty>::serialize(self, s)
            }
        }
    };
}
pub(crate) use strict;
