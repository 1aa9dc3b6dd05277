//! A bound on how much a YAML document may expand to while it is deserialized.
//!
//! YAML anchors and aliases (`&big` … `*big`) let a small document describe a huge one: a
//! 186 KiB spec of one 100 KB anchored scalar and 30,000 aliases builds 3 GB of strings (the
//! "billion laughs" family). serde_yaml bounds only how often it replays aliases, not how much
//! the replays build, so [`Bounded`] sits between the YAML deserializer and the values built
//! from it and charges every value it hands over — its scalar bytes and one node — to a
//! [`Budget`]. The first value past either limit fails the parse with an error naming the field,
//! before that value is allocated. The wrapper is parser-agnostic: it sees exactly what the
//! visitors see, aliases expanded, so nothing can be built that was not paid for.
//!
//! One generic struct wraps every serde role (deserializer, visitor, seed, seq/map/enum access);
//! the trait impls below only thread the budget through and count at the leaves.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

/// Scalar bytes one document may expand to. The API's body limit is 1 MiB, so a document
/// without aliases never comes near it; a real spec is a few KiB.
pub const MAX_EXPANDED_BYTES: usize = 4 << 20;
/// Values (scalars, sequences, maps) one document may expand to.
pub const MAX_EXPANDED_NODES: usize = 250_000;

/// What one document has spent so far.
#[derive(Debug, Default)]
pub struct Budget {
    bytes: Cell<usize>,
    nodes: Cell<usize>,
}

impl Budget {
    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        let spent_bytes = self.bytes.get().saturating_add(bytes);
        let spent_nodes = self.nodes.get() + 1;
        if spent_bytes > MAX_EXPANDED_BYTES || spent_nodes > MAX_EXPANDED_NODES {
            return Err(E::custom(format_args!(
                "the document expands to more than {} MiB or {MAX_EXPANDED_NODES} values, most likely \
                 through YAML aliases (`*name` repeating an `&name` anchor); write the values out \
                 once, or shorten them",
                MAX_EXPANDED_BYTES >> 20
            )));
        }
        self.bytes.set(spent_bytes);
        self.nodes.set(spent_nodes);
        Ok(())
    }
}

/// Any serde role (deserializer, visitor, seed or access), charging what passes through it to
/// `budget`.
pub struct Bounded<'b, T> {
    inner: T,
    budget: &'b Budget,
}

impl<'b, T> Bounded<'b, T> {
    pub fn new(inner: T, budget: &'b Budget) -> Self {
        Bounded { inner, budget }
    }

    fn wrap<U>(&self, inner: U) -> Bounded<'b, U> {
        Bounded {
            inner,
            budget: self.budget,
        }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let visitor = self.wrap(visitor);
            self.inner.$method(visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<'_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.inner.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.inner.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.inner.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.inner.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.inner.deserialize_struct(name, fields, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.wrap(visitor);
        self.inner.deserialize_enum(name, variants, visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// Visitor methods for leaves: each costs one node and the bytes `$len` computes from `$v`.
macro_rules! charge_visit {
    ($($method:ident($v:ident: $ty:ty) => $len:expr;)*) => {$(
        fn $method<E: de::Error>(self, $v: $ty) -> Result<V::Value, E> {
            self.budget.charge($len)?;
            self.inner.$method($v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Bounded<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }

    charge_visit! {
        visit_bool(v: bool) => 0;
        visit_i8(v: i8) => 0;
        visit_i16(v: i16) => 0;
        visit_i32(v: i32) => 0;
        visit_i64(v: i64) => 0;
        visit_i128(v: i128) => 0;
        visit_u8(v: u8) => 0;
        visit_u16(v: u16) => 0;
        visit_u32(v: u32) => 0;
        visit_u64(v: u64) => 0;
        visit_u128(v: u128) => 0;
        visit_f32(v: f32) => 0;
        visit_f64(v: f64) => 0;
        visit_char(v: char) => v.len_utf8();
        visit_str(v: &str) => v.len();
        visit_borrowed_str(v: &'de str) => v.len();
        visit_string(v: String) => v.len();
        visit_bytes(v: &[u8]) => v.len();
        visit_borrowed_bytes(v: &'de [u8]) => v.len();
        visit_byte_buf(v: Vec<u8>) => v.len();
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.budget.charge(0)?;
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.budget.charge(0)?;
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        let deserializer = self.wrap(deserializer);
        self.inner.visit_some(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        let deserializer = self.wrap(deserializer);
        self.inner.visit_newtype_struct(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.budget.charge(0)?;
        let seq = self.wrap(seq);
        self.inner.visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.budget.charge(0)?;
        let map = self.wrap(map);
        self.inner.visit_map(map)
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.budget.charge(0)?;
        let data = self.wrap(data);
        self.inner.visit_enum(data)
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Bounded<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        let deserializer = self.wrap(deserializer);
        self.inner.deserialize(deserializer)
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Bounded<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        let seed = self.wrap(seed);
        self.inner.next_element_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Bounded<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        let seed = self.wrap(seed);
        self.inner.next_key_seed(seed)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.wrap(seed);
        self.inner.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, 'b, A: EnumAccess<'de>> EnumAccess<'de> for Bounded<'b, A> {
    type Error = A::Error;
    type Variant = Bounded<'b, A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self::Variant), A::Error> {
        let budget = self.budget;
        let (value, variant) = self.inner.variant_seed(Bounded::new(seed, budget))?;
        Ok((value, Bounded::new(variant, budget)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Bounded<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.wrap(seed);
        self.inner.newtype_variant_seed(seed)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let visitor = self.wrap(visitor);
        self.inner.tuple_variant(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let visitor = self.wrap(visitor);
        self.inner.struct_variant(fields, visitor)
    }
}
