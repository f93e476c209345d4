//! One macro for the closed vocabularies that are stored as lower-case text (the CHECK lists of
//! `migrations/12_render_jobs.sql`) and sent as protobuf enums: the mapping is written once, as a
//! table, so the database text, the Rust variant and the protobuf value cannot drift apart.

/// Defines `pub enum $name` with `ALL`, `as_db`/`from_db` (the database text),
/// `to_pb`/`to_pb_i32`, `from_pb`/`from_pb_i32` (`None` for UNSPECIFIED and unknown numbers) and
/// `Display` (the database text). `$pb` names an enum of `flatrender.render.v1`.
macro_rules! db_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $pb:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $db:literal => $pbv:ident, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The database text: the protobuf name in lower case without the enum prefix.
            pub fn as_db(&self) -> &'static str {
                match self {
                    $(Self::$variant => $db,)+
                }
            }

            /// The value stored as `text`; `None` for any other text.
            pub fn from_db(text: &str) -> Option<Self> {
                match text {
                    $($db => Some(Self::$variant),)+
                    _ => None,
                }
            }

            /// The protobuf value.
            pub fn to_pb(self) -> flatrender_proto::flatrender::render::v1::$pb {
                match self {
                    $(Self::$variant => flatrender_proto::flatrender::render::v1::$pb::$pbv,)+
                }
            }

            /// The protobuf value as prost stores it in a message field.
            pub fn to_pb_i32(self) -> i32 {
                self.to_pb() as i32
            }

            /// From protobuf; `None` for UNSPECIFIED.
            pub fn from_pb(value: flatrender_proto::flatrender::render::v1::$pb) -> Option<Self> {
                match value {
                    $(flatrender_proto::flatrender::render::v1::$pb::$pbv => Some(Self::$variant),)+
                    #[allow(unreachable_patterns, reason = "UNSPECIFIED, where the enum has it")]
                    _ => None,
                }
            }

            /// From a message field; `None` for UNSPECIFIED and numbers the enum does not define.
            pub fn from_pb_i32(value: i32) -> Option<Self> {
                flatrender_proto::flatrender::render::v1::$pb::try_from(value).ok().and_then(Self::from_pb)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_db())
            }
        }
    };
}

pub(crate) use db_enum;

/// Test support: checks an enum against its protobuf twin (every defined number but 0 maps, and
/// the database text is the protobuf name without `prefix`, lower-cased).
#[cfg(test)]
macro_rules! assert_matches_pb {
    ($name:ident, $pb:ident, $prefix:literal) => {{
        use flatrender_proto::flatrender::render::v1::$pb as Pb;
        let mut defined = 0;
        for number in 1..1000 {
            let Ok(pb_value) = Pb::try_from(number) else { continue };
            defined += 1;
            let value = $name::from_pb(pb_value)
                .unwrap_or_else(|| panic!("{} has no variant for {}", stringify!($name), pb_value.as_str_name()));
            assert_eq!(value.to_pb(), pb_value);
            assert_eq!(value.to_pb_i32(), number);
            assert_eq!($name::from_pb_i32(number), Some(value));
            let expected = pb_value.as_str_name().strip_prefix($prefix).map(str::to_ascii_lowercase);
            assert_eq!(Some(value.as_db()), expected.as_deref(), "{}", pb_value.as_str_name());
            assert_eq!($name::from_db(value.as_db()), Some(value));
            assert_eq!(value.to_string(), value.as_db());
        }
        assert_eq!($name::ALL.len(), defined, "{} covers every protobuf value", stringify!($name));
        assert_eq!($name::from_pb(Pb::try_from(0).unwrap()), None);
        assert_eq!($name::from_pb_i32(0), None);
        assert_eq!($name::from_pb_i32(-1), None);
        assert_eq!($name::from_db(""), None);
    }};
}

#[cfg(test)]
pub(crate) use assert_matches_pb;
