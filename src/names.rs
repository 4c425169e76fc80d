//! Names of pools and volumes, and the device-mapper names and UUIDs dmctl
//! derives from them.
//!
//! Pool and volume names match `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`. They are
//! used as file and directory names in the state root, so they must never
//! contain `/` and must never be `.` or `..` (the first character being
//! alphanumeric guarantees the latter).
//!
//! Device-mapper names are `dmctl+POOL` for a pool and `dmctl+POOL+VOLUME`
//! for a thin volume. `+` cannot occur in a name, so the mapping is
//! unambiguous (pool `a-b` volume `c` and pool `a` volume `b-c` differ).

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The longest pool or volume name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Prefix of every device-mapper name dmctl creates.
pub const DM_NAME_PREFIX: &str = "dmctl+";

/// Separator between pool and volume in a thin device-mapper name; not a
/// character names may contain.
pub const DM_NAME_SEP: char = '+';

/// Prefix of every device-mapper UUID dmctl creates.
pub const DM_UUID_PREFIX: &str = "DMCTL-";

/// The kernel's limit on device-mapper names, in bytes, excluding the
/// terminating NUL (`DM_NAME_LEN` is 128).
pub const DM_NAME_MAX_LEN: usize = 127;

/// The kernel's limit on device-mapper UUIDs, in bytes, excluding the
/// terminating NUL (`DM_UUID_LEN` is 129).
pub const DM_UUID_MAX_LEN: usize = 128;

/// Length of a pool UUID as made by [`new_pool_uuid`]: 32 lowercase hex
/// characters.
pub const POOL_UUID_LEN: usize = 32;

/// Echo untrusted input in an error message: control characters and quotes
/// escaped so the message stays on one line, and very long input cut.
fn echo(s: &str) -> String {
    const MAX_ECHO: usize = 80;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX_ECHO {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_debug());
    }
    out
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// Whether `name` matches `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= MAX_NAME_LEN
                && first.is_ascii_alphanumeric()
                && rest.iter().all(|&b| is_name_char(b))
        }
        None => false,
    }
}

/// Check a pool or volume name; `kind` ("pool", "volume", "snapshot") is
/// used in the error message.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid {kind} name '{}': must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}",
            echo(name)
        )))
    }
}

/// Prefix of the names of warm spares (`dmctl image warm`, see
/// `ops::spare`). Reserved: a user's volume cannot take it, as LVM reserves
/// `snapshot` and `pvmove`.
pub const SPARE_PREFIX: &str = "spare.";

/// Whether `name` is the name of a warm spare.
pub fn is_spare_name(name: &str) -> bool {
    name.starts_with(SPARE_PREFIX)
}

/// Volumes of `dmctl serve`'s snapshots: `ctr.ID` (containerd's keys are
/// never names; see `ops::snapshotter`).
pub const SNAPSHOT_PREFIX: &str = "ctr.";

/// The volume holding snapshot number `id` of `dmctl serve`.
pub fn snapshot_volume_name(id: u64) -> String {
    format!("{SNAPSHOT_PREFIX}{id}")
}

/// The snapshot number of a `dmctl serve` volume name.
pub fn snapshot_volume_id(name: &str) -> Option<u64> {
    name.strip_prefix(SNAPSHOT_PREFIX)?.parse().ok()
}

/// Refuse, for a volume a user names, a name dmctl keeps for its own.
pub fn check_not_reserved(name: &str) -> Result<()> {
    if is_spare_name(name) {
        return Err(Error::Invalid(format!(
            "invalid volume name '{}': names starting with '{SPARE_PREFIX}' are reserved \
             for warm spares (dmctl image warm)",
            echo(name)
        )));
    }
    if name.starts_with(SNAPSHOT_PREFIX) {
        return Err(Error::Invalid(format!(
            "invalid volume name '{}': names starting with '{SNAPSHOT_PREFIX}' are \
             reserved for containerd's snapshots (dmctl serve)",
            echo(name)
        )));
    }
    Ok(())
}

/// A volume named on the command line as `POOL/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeRef {
    pub pool: String,
    pub name: String,
}

impl VolumeRef {
    /// A reference from separate, validated, pool and volume names.
    pub fn new(pool: &str, name: &str) -> Result<Self> {
        validate_name("pool", pool)?;
        validate_name("volume", name)?;
        Ok(VolumeRef {
            pool: pool.to_string(),
            name: name.to_string(),
        })
    }

    /// The device-mapper name of this volume.
    pub fn dm_name(&self) -> String {
        thin_dm_name(&self.pool, &self.name)
    }
}

impl FromStr for VolumeRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let shape_error =
            || Error::Invalid(format!("invalid volume '{}': expected POOL/NAME", echo(s)));
        let (pool, name) = s.split_once('/').ok_or_else(shape_error)?;
        if pool.is_empty() || name.is_empty() || name.contains('/') {
            return Err(shape_error());
        }
        VolumeRef::new(pool, name)
    }
}

impl fmt::Display for VolumeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.pool, self.name)
    }
}

/// Device-mapper name of a pool: `dmctl+POOL`.
pub fn pool_dm_name(pool: &str) -> String {
    format!("{DM_NAME_PREFIX}{pool}")
}

/// Device-mapper name of a thin volume: `dmctl+POOL+VOLUME`.
///
/// Two maximal names (64 + 64 bytes) give a 135-byte dm name, over the
/// kernel's [`DM_NAME_MAX_LEN`]; callers creating a volume must check the
/// result with [`check_dm_name`].
pub fn thin_dm_name(pool: &str, name: &str) -> String {
    format!("{DM_NAME_PREFIX}{pool}{DM_NAME_SEP}{name}")
}

/// What a dmctl device-mapper name refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmName {
    Pool { pool: String },
    Thin { pool: String, name: String },
}

/// Decode a device-mapper name made by [`pool_dm_name`] or
/// [`thin_dm_name`]; `None` for names dmctl did not make.
pub fn parse_dm_name(dm_name: &str) -> Option<DmName> {
    let rest = dm_name.strip_prefix(DM_NAME_PREFIX)?;
    match rest.split_once(DM_NAME_SEP) {
        None if is_valid_name(rest) => Some(DmName::Pool {
            pool: rest.to_string(),
        }),
        Some((pool, name)) if is_valid_name(pool) && is_valid_name(name) => Some(DmName::Thin {
            pool: pool.to_string(),
            name: name.to_string(),
        }),
        _ => None,
    }
}

/// Check that a device-mapper name fits the kernel's limit.
pub fn check_dm_name(dm_name: &str) -> Result<()> {
    if dm_name.len() > DM_NAME_MAX_LEN {
        return Err(Error::Invalid(format!(
            "device-mapper name '{}' is {} bytes, longer than the kernel's limit of \
             {DM_NAME_MAX_LEN}: use shorter pool or volume names",
            echo(dm_name),
            dm_name.len()
        )));
    }
    Ok(())
}

/// Device-mapper UUID of a pool: `DMCTL-<pool uuid>`.
pub fn pool_dm_uuid(pool_uuid: &str) -> String {
    format!("{DM_UUID_PREFIX}{pool_uuid}")
}

/// Device-mapper UUID of a thin volume: `DMCTL-<pool uuid>-<device id>`.
pub fn thin_dm_uuid(pool_uuid: &str, device_id: u32) -> String {
    format!("{DM_UUID_PREFIX}{pool_uuid}-{device_id}")
}

/// Whether a device-mapper UUID was made by dmctl.
pub fn is_dmctl_uuid(uuid: &str) -> bool {
    uuid.starts_with(DM_UUID_PREFIX)
}

/// Whether `s` looks like a pool UUID made by [`new_pool_uuid`].
pub fn is_pool_uuid(s: &str) -> bool {
    s.len() == POOL_UUID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn random_bytes_urandom(buf: &mut [u8]) -> bool {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_ok()
}

fn random_bytes_getrandom(buf: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe the writable `rest` slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        filled += n as usize;
    }
    true
}

/// Last resort when the kernel's random sources are unavailable: not
/// random, but distinct across calls, processes and time, which is all a
/// pool UUID needs.
fn unique_bytes_fallback(buf: &mut [u8; 16]) {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u64(count);
        h.write_usize(i);
        let v = h.finish().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// A new random pool UUID: 32 lowercase hex characters (128 bits from
/// `/dev/urandom`).
pub fn new_pool_uuid() -> String {
    let mut buf = [0u8; 16];
    if !random_bytes_urandom(&mut buf) && !random_bytes_getrandom(&mut buf) {
        unique_bytes_fallback(&mut buf);
    }
    hex(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn invalid_msg<T: fmt::Debug>(r: Result<T>) -> String {
        match r {
            Err(Error::Invalid(msg)) => msg,
            other => panic!("expected Error::Invalid, got {other:?}"),
        }
    }

    #[test]
    fn accepts_valid_names() {
        let max = "a".repeat(64);
        for name in [
            "a", "Z", "0", "a.b-c_d", "pool1", "a..b", "a-", "a.", "9_", &max,
        ] {
            assert!(is_valid_name(name), "{name:?}");
            validate_name("pool", name).unwrap();
        }
    }

    #[test]
    fn rejects_invalid_names() {
        let long = "a".repeat(65);
        for name in [
            "", ".", "..", "...", ".a", "-a", "_a", "a/b", "/", "a/", "/a", "a b", " a", "a\n",
            "\n", "a\0", "é", "aé", "ünï", "a+b", "a:b", "a*", "a\\b", "a\tb", &long,
        ] {
            assert!(!is_valid_name(name), "{name:?}");
            let msg = invalid_msg(validate_name("volume", name));
            assert!(msg.starts_with("invalid volume name '"), "{msg}");
            assert!(
                msg.ends_with("': must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}"),
                "{msg}"
            );
            assert!(!msg.contains('\n') && !msg.contains('\0'), "{msg:?}");
        }
    }

    #[test]
    fn error_message_escapes_and_truncates() {
        let msg = invalid_msg(validate_name("pool", "bad\nname"));
        assert_eq!(
            msg,
            "invalid pool name 'bad\\nname': must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
        );
        let msg = invalid_msg(validate_name("pool", &"x".repeat(10_000)));
        assert!(msg.len() < 200, "{}", msg.len());
        assert!(msg.contains("..."));
    }

    #[test]
    fn volume_ref_parses() {
        let v: VolumeRef = "tank/vol.1".parse().unwrap();
        assert_eq!(v.pool, "tank");
        assert_eq!(v.name, "vol.1");
        assert_eq!(v.to_string(), "tank/vol.1");
        assert_eq!(v, VolumeRef::new("tank", "vol.1").unwrap());
        let round: VolumeRef = v.to_string().parse().unwrap();
        assert_eq!(round, v);
    }

    #[test]
    fn volume_ref_rejects() {
        for s in [
            "",
            "tank",
            "/",
            "tank/",
            "/vol",
            "a/b/c",
            "a//b",
            "tank/vol/",
        ] {
            let msg = invalid_msg(s.parse::<VolumeRef>());
            assert_eq!(msg, format!("invalid volume '{s}': expected POOL/NAME"));
        }
        let msg = invalid_msg("tank/..".parse::<VolumeRef>());
        assert!(msg.starts_with("invalid volume name '..'"), "{msg}");
        let msg = invalid_msg("-x/vol".parse::<VolumeRef>());
        assert!(msg.starts_with("invalid pool name '-x'"), "{msg}");
        let msg = invalid_msg("a\nb".parse::<VolumeRef>());
        assert!(!msg.contains('\n'), "{msg:?}");
        assert!(VolumeRef::new("a", "b c").is_err());
    }

    #[test]
    fn dm_names() {
        assert_eq!(pool_dm_name("tank"), "dmctl+tank");
        assert_eq!(thin_dm_name("tank", "vol"), "dmctl+tank+vol");
        assert!(pool_dm_name("tank").starts_with(DM_NAME_PREFIX));
        assert!(thin_dm_name("tank", "vol").starts_with(DM_NAME_PREFIX));
        let v: VolumeRef = "tank/vol".parse().unwrap();
        assert_eq!(v.dm_name(), "dmctl+tank+vol");
    }

    #[test]
    fn dm_names_do_not_collide() {
        assert_ne!(thin_dm_name("a-b", "c"), thin_dm_name("a", "b-c"));
        assert_ne!(thin_dm_name("a.b", "c"), thin_dm_name("a", "b.c"));
        let pools = ["a", "a-b", "a-b-c", "b", "pool", "a.pool"];
        let vols = ["c", "b-c", "c-d", "pool", "b", "a"];
        let mut seen = HashSet::new();
        for p in pools {
            assert!(seen.insert(pool_dm_name(p)), "pool {p}");
            for v in vols {
                assert!(seen.insert(thin_dm_name(p, v)), "{p}/{v}");
            }
        }
    }

    #[test]
    fn dm_names_decode() {
        assert_eq!(
            parse_dm_name("dmctl+tank"),
            Some(DmName::Pool {
                pool: "tank".into()
            })
        );
        assert_eq!(
            parse_dm_name("dmctl+tank+v-1"),
            Some(DmName::Thin {
                pool: "tank".into(),
                name: "v-1".into()
            })
        );
        for other in [
            "",
            "dmctl+",
            "dmctl++x",
            "dmctl+a+",
            "dmctl+a+b+c",
            "vg0-root",
            "dmctl-tank",
            "dmctl+a/b",
            "DMCTL+tank",
        ] {
            assert_eq!(parse_dm_name(other), None, "{other:?}");
        }
    }

    #[test]
    fn dm_name_length_limit() {
        let p = "p".repeat(64);
        let v = "v".repeat(64);
        assert!(check_dm_name(&pool_dm_name(&p)).is_ok());
        let long = thin_dm_name(&p, &v);
        assert_eq!(long.len(), 135);
        assert!(invalid_msg(check_dm_name(&long)).contains("127"));
        let fits = thin_dm_name(&p, &"v".repeat(56));
        assert_eq!(fits.len(), DM_NAME_MAX_LEN);
        assert!(check_dm_name(&fits).is_ok());
    }

    #[test]
    fn dm_uuids() {
        let u = "0123456789abcdef0123456789abcdef";
        assert_eq!(pool_dm_uuid(u), format!("DMCTL-{u}"));
        assert_eq!(thin_dm_uuid(u, 7), format!("DMCTL-{u}-7"));
        assert_ne!(pool_dm_uuid(u), thin_dm_uuid(u, 0));
        assert!(is_dmctl_uuid(&pool_dm_uuid(u)));
        assert!(is_dmctl_uuid(&thin_dm_uuid(u, u32::MAX)));
        assert!(thin_dm_uuid(u, u32::MAX).len() <= DM_UUID_MAX_LEN);
        assert!(!is_dmctl_uuid("LVM-abc"));
        assert!(!is_dmctl_uuid(""));
        assert!(!is_dmctl_uuid("dmctl-abc"));
    }

    #[test]
    fn pool_uuids_are_hex_and_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..100 {
            let u = new_pool_uuid();
            assert!(is_pool_uuid(&u), "{u}");
            assert!(seen.insert(u));
        }
        assert!(!is_pool_uuid("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_pool_uuid("0123456789abcdef"));
        assert!(!is_pool_uuid("0123456789abcdef0123456789abcdeg"));
    }

    #[test]
    fn random_sources() {
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        assert!(random_bytes_getrandom(&mut a));
        assert!(random_bytes_getrandom(&mut b));
        assert_ne!(a, b);
        let mut c = [0u8; 16];
        let mut d = [0u8; 16];
        unique_bytes_fallback(&mut c);
        unique_bytes_fallback(&mut d);
        assert_ne!(c, d);
        assert!(is_pool_uuid(&hex(&c)));
    }
}
