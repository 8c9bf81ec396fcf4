//! Name tables: every enum of the domain is spelled by one table, and the config file,
//! the CLI (clap value enums), the control API, `xlb status` and the state file all spell
//! it from there.
//!
//! Owns: the [`Named`] trait and the [`named_enum!`] macro that declares an enum together
//! with its table. Must not touch: what the values mean (that is the enum's own module).

/// An enum whose values have one spelling each, listed once in [`Named::NAMES`].
pub trait Named: Copy + PartialEq + Sized + 'static {
    /// Every value with its name, in the order messages list them.
    const NAMES: &'static [(&'static str, Self)];

    /// The value's name.
    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, v)| *v == self)
            .map(|(n, _)| *n)
            // The macro lists every variant; a hand-written table that misses one is a bug
            // that the name-table test catches.
            .unwrap_or("?")
    }

    /// The value named `s` (exact spelling).
    fn from_name(s: &str) -> Option<Self> {
        Self::NAMES.iter().find(|(n, _)| *n == s).map(|(_, v)| *v)
    }

    /// `"tcp", "udp"`: the accepted names, quoted, for messages.
    fn expected() -> String {
        Self::NAMES
            .iter()
            .map(|(n, _)| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// [`Named::from_name`] with the message every encoding uses for a bad name.
    fn parse_name(s: &str) -> Result<Self, String> {
        Self::from_name(s)
            .ok_or_else(|| format!("unknown value {s:?} (expected one of {})", Self::expected()))
    }
}

/// Declares a fieldless enum and its name table: `Display`, serde (as the name), clap's
/// `ValueEnum` and [`Named`] all come from the one list of `Variant = "name"` pairs.
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $crate::model::names::Named for $name {
            const NAMES: &'static [(&'static str, Self)] = &[ $( ($text, $name::$variant) ),+ ];
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str($crate::model::names::Named::name(*self))
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                <Self as $crate::model::names::Named>::parse_name(s)
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($crate::model::names::Named::name(*self))
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(d)?;
                <Self as $crate::model::names::Named>::parse_name(&s)
                    .map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }

        impl ::clap::ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] {
                &[ $( $name::$variant ),+ ]
            }
            fn to_possible_value(&self) -> Option<::clap::builder::PossibleValue> {
                Some(::clap::builder::PossibleValue::new(
                    $crate::model::names::Named::name(*self),
                ))
            }
        }
    };
}
