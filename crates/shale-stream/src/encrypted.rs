//! An [`ObjectStore`] wrapper that encrypts every object client-side (envelope encryption), so
//! the bucket only ever holds ciphertext. Callers see plaintext objects exactly as before: the
//! same keys, plaintext sizes in `head`/`list`, ranged GETs of any shape, put modes and
//! precondition errors passed through.
//!
//! Every object gets a fresh random AES-256-GCM data key (DEK), wrapped by the current key
//! encryption key (KEK) of a [`Keyring`] and stored in a fixed-size header at offset 0. The body
//! is sealed in [`CHUNK_LEN`] plaintext chunks, each with its own tag, so a ranged read fetches
//! and decrypts only the chunks covering the range:
//!
//! ```text
//! object = header chunk+                                                      (format v1)
//! header = magic "SHLE" | version u8 | kek_id_len u8 | kek_id [64] (zero padded)
//!        | nonce_prefix [4] | wrapped_dek_len u16 | wrapped_dek [180] (zero padded)  (256 B)
//! chunk  = AES-256-GCM(dek, nonce = nonce_prefix | index u64, aad = chunk_aad)
//!          of CHUNK_LEN plaintext bytes (the last chunk shorter), then its 16-byte tag
//! ```
//!
//! An empty object still has one (empty) chunk: its tag marks the end, so cutting an object
//! back to its header is detected. The header has a fixed size and every chunk but the last is
//! full, so plaintext and ciphertext sizes follow from each other: listing needs no extra
//! request.
//!
//! Associated data binds each chunk to the cluster id, the object key, its index and whether it
//! is the last chunk; the wrapped DEK to the cluster id, the object key, the KEK id and the
//! header's nonce prefix. Moving bytes between objects or clusters, reordering chunks, and
//! truncating or extending an object therefore all fail authentication. Chunk nonces are
//! derived (prefix + index), which is safe because a DEK seals exactly one object.
//!
//! A ranged read needs the object's DEK: unwrapped DEKs are kept in a small LRU cache by object
//! key. A cold ranged read costs two GETs (the 256-byte header, then the chunks), a warm one a
//! single GET; a whole-object GET always reads the header in-line. The cached entry remembers
//! the object's size and ETag, and a response for another version drops it and starts over.
//!
//! Decryption failures are `object_store::Error::Generic { store: "EncryptedStore", .. }`
//! naming the object key and the cause, counted in `shale_object_encryption_failures_total`;
//! each wrap and unwrap counts in `shale_kek_use_total{kek_id, op}`.
//!
//! Limits: multipart uploads are refused (`NotSupported`): an object is sealed whole, as Shale
//! writes them. Copy and rename re-encrypt (GET, decrypt, encrypt under the new key, PUT): the
//! object key is part of the associated data. Object tags are not carried over by a copy.

use async_trait::async_trait;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use bytes::{Buf, Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult,
    MultipartUpload, OBJECT_STORE_COALESCE_DEFAULT, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, coalesce_ranges,
};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::sync::Arc;

/// Plaintext bytes per chunk. 64 KiB keeps the tag overhead at 0.02% and one AEAD call per
/// 64 KiB, while a ranged read fetches at most two partial chunks (< 128 KiB) beyond what it
/// asked for: small next to an S3 GET's first-byte latency, and Shale's block reads are
/// usually far larger. Part of the format: changing it needs a new format version.
pub const CHUNK_LEN: u64 = 64 * 1024;
/// Length of a KEK or a DEK (AES-256).
pub const KEY_LEN: usize = 32;
/// Longest KEK id (ids are 1 to 64 characters of `[A-Za-z0-9._-]`).
pub const MAX_KEK_ID_LEN: usize = 64;
/// Room for a wrapped DEK in the header: a [`Keyring`] needs 60 bytes, the rest leaves space
/// for a KMS's ciphertext blob without changing the header size.
pub const MAX_WRAPPED_DEK_LEN: usize = 180;
/// Entries of the DEK cache when the caller has no better figure (a few hundred bytes each).
pub const DEFAULT_DEK_CACHE_ENTRIES: usize = 4096;

/// `object.encryption.keys`: comma-separated `ID=SOURCE` (see [`Keyring::from_settings`]).
pub const KEYS_SETTING: &str = "object.encryption.keys";
/// `object.encryption.key.id`: the KEK id new objects are wrapped with.
pub const CURRENT_KEY_SETTING: &str = "object.encryption.key.id";

const STORE: &str = "EncryptedStore";
const MAGIC: [u8; 4] = *b"SHLE";
const FORMAT_VERSION: u8 = 1;
const TAG_LEN: usize = 16;
const NONCE_PREFIX_LEN: usize = 4;
const HEADER_LEN: usize = 256;
const _: () =
    assert!(4 + 1 + 1 + MAX_KEK_ID_LEN + NONCE_PREFIX_LEN + 2 + MAX_WRAPPED_DEK_LEN == HEADER_LEN);
/// A KEK-wrapped DEK from a [`Keyring`]: nonce, sealed DEK, tag.
const KEYRING_WRAPPED_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;
/// Domain labels of the associated data (distinct, so no chunk AAD equals a DEK AAD).
const CHUNK_AAD_LABEL: &[u8] = b"shale/object-chunk/v1";
const DEK_AAD_LABEL: &[u8] = b"shale/object-dek/v1";

// ---------------------------------------------------------------------------------------------
// Layout: sizes and offsets, from the plaintext size or the ciphertext size alone.

/// Where the chunks of an object of `plain_len` bytes lie in its encrypted form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    plain_len: u64,
    /// At least one: an empty object has one empty final chunk.
    chunks: u64,
}

const HEADER: u64 = HEADER_LEN as u64;
const TAG: u64 = TAG_LEN as u64;
/// Ciphertext length of a full chunk.
const STRIDE: u64 = CHUNK_LEN + TAG;

impl Layout {
    fn for_plaintext(plain_len: u64) -> Layout {
        Layout {
            plain_len,
            chunks: plain_len.div_ceil(CHUNK_LEN).max(1),
        }
    }

    /// The layout of an encrypted object of `len` bytes; None if no object encrypts to it.
    fn from_ciphertext_len(len: u64) -> Option<Layout> {
        let body = len.checked_sub(HEADER)?;
        let (full, rest) = (body / STRIDE, body % STRIDE);
        let layout = match rest {
            0 if full > 0 => Layout {
                plain_len: full * CHUNK_LEN,
                chunks: full,
            },
            // A lone empty chunk: the empty object. After full chunks the writer never adds one.
            TAG if full == 0 => Layout {
                plain_len: 0,
                chunks: 1,
            },
            r if r > TAG => Layout {
                plain_len: full * CHUNK_LEN + (r - TAG),
                chunks: full + 1,
            },
            _ => return None,
        };
        Some(layout)
    }

    fn ciphertext_len(&self) -> u64 {
        HEADER + self.plain_len + self.chunks * TAG
    }

    fn chunk_plain_len(&self, index: u64) -> u64 {
        self.plain_len
            .saturating_sub(index.saturating_mul(CHUNK_LEN))
            .min(CHUNK_LEN)
    }

    /// At most [`STRIDE`], so the cast cannot truncate.
    fn chunk_ciphertext_len(&self, index: u64) -> usize {
        (self.chunk_plain_len(index) + TAG) as usize
    }

    fn is_final(&self, index: u64) -> bool {
        index + 1 == self.chunks
    }

    /// The chunks holding plaintext `range` (non-empty, inside the object), and the
    /// ciphertext bytes they occupy.
    fn span(&self, range: &Range<u64>) -> (Range<u64>, Range<u64>) {
        let first = range.start / CHUNK_LEN;
        let last = (range.end - 1) / CHUNK_LEN;
        let start = HEADER + first * STRIDE;
        let end = HEADER + last * STRIDE + self.chunk_ciphertext_len(last) as u64;
        (first..last + 1, start..end)
    }
}

// ---------------------------------------------------------------------------------------------
// Header and associated data.

/// The parsed header of an encrypted object (borrowing the header bytes).
struct Header<'a> {
    kek_id: &'a str,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    wrapped: &'a [u8],
}

impl<'a> Header<'a> {
    fn encode(
        kek_id: &str,
        nonce_prefix: &[u8; NONCE_PREFIX_LEN],
        wrapped: &[u8],
    ) -> Result<Vec<u8>, String> {
        if !valid_kek_id(kek_id) {
            return Err(format!(
                "KEK id {kek_id:?} is not 1-{MAX_KEK_ID_LEN} characters of [A-Za-z0-9._-]"
            ));
        }
        let id_len = u8::try_from(kek_id.len()).map_err(|_| "KEK id too long".to_string())?;
        let wrapped_len = u16::try_from(wrapped.len())
            .ok()
            .filter(|&n| n > 0 && usize::from(n) <= MAX_WRAPPED_DEK_LEN)
            .ok_or_else(|| {
                format!(
                    "wrapped data key of {} bytes (1-{MAX_WRAPPED_DEK_LEN} fit the header)",
                    wrapped.len()
                )
            })?;
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(&MAGIC);
        h.push(FORMAT_VERSION);
        h.push(id_len);
        h.extend_from_slice(kek_id.as_bytes());
        h.resize(6 + MAX_KEK_ID_LEN, 0);
        h.extend_from_slice(nonce_prefix);
        h.extend_from_slice(&wrapped_len.to_be_bytes());
        h.extend_from_slice(wrapped);
        h.resize(HEADER_LEN, 0);
        Ok(h)
    }

    /// Parses untrusted bytes: every field is bounds-checked and every padding byte must be
    /// zero, so that no byte of the header can change without the read failing.
    fn parse(bytes: &'a [u8]) -> Result<Header<'a>, &'static str> {
        const SHORT: &str = "header truncated";
        let mut b = bytes;
        if *take::<4>(&mut b).ok_or(SHORT)? != MAGIC {
            return Err("not an encrypted object (bad magic)");
        }
        let [version] = *take::<1>(&mut b).ok_or(SHORT)?;
        if version != FORMAT_VERSION {
            return Err("unsupported format version");
        }
        let [id_len] = *take::<1>(&mut b).ok_or(SHORT)?;
        let id_field = take::<MAX_KEK_ID_LEN>(&mut b).ok_or(SHORT)?;
        let kek_id = padded(id_field, usize::from(id_len))
            .and_then(|id| std::str::from_utf8(id).ok())
            // Validated: the id reaches error messages and metric labels.
            .filter(|id| valid_kek_id(id))
            .ok_or("malformed KEK id")?;
        let nonce_prefix = *take::<NONCE_PREFIX_LEN>(&mut b).ok_or(SHORT)?;
        let wrapped_len = u16::from_be_bytes(*take::<2>(&mut b).ok_or(SHORT)?);
        let wrapped_field = take::<MAX_WRAPPED_DEK_LEN>(&mut b).ok_or(SHORT)?;
        let wrapped = padded(wrapped_field, usize::from(wrapped_len))
            .filter(|w| !w.is_empty())
            .ok_or("malformed wrapped data key")?;
        Ok(Header {
            kek_id,
            nonce_prefix,
            wrapped,
        })
    }
}

/// Splits the first `N` bytes off `bytes`.
fn take<'a, const N: usize>(bytes: &mut &'a [u8]) -> Option<&'a [u8; N]> {
    let (head, rest) = bytes.split_first_chunk::<N>()?;
    *bytes = rest;
    Some(head)
}

/// The first `len` bytes of a zero-padded field; None if `len` overruns it or the padding is
/// not all zero.
fn padded(field: &[u8], len: usize) -> Option<&[u8]> {
    let (value, pad) = field.split_at_checked(len)?;
    pad.iter().all(|&b| b == 0).then_some(value)
}

fn valid_kek_id(id: &str) -> bool {
    (1..=MAX_KEK_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Appends `field` with its length, so that concatenated fields cannot be re-split.
fn push_field(aad: &mut Vec<u8>, field: &[u8]) {
    aad.extend_from_slice(&(field.len() as u64).to_be_bytes());
    aad.extend_from_slice(field);
}

/// Associated data of a wrapped DEK.
fn dek_aad(cluster_id: &[u8], key: &str, kek_id: &str, nonce_prefix: &[u8]) -> Vec<u8> {
    let mut aad = DEK_AAD_LABEL.to_vec();
    push_field(&mut aad, cluster_id);
    push_field(&mut aad, key.as_bytes());
    push_field(&mut aad, kek_id.as_bytes());
    push_field(&mut aad, nonce_prefix);
    aad
}

// ---------------------------------------------------------------------------------------------
// Key management.

/// Why a data key could not be wrapped or unwrapped.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// The key id is not (or no longer) available: e.g. removed from the keyring.
    #[error("unknown KEK id {0:?} (not in the keyring)")]
    UnknownKey(String),
    /// Anything else; the message never holds key material.
    #[error("{0}")]
    Failed(String),
}

/// Wraps and unwraps data keys under named key-encryption keys: the plug-in point for a KMS.
///
/// [`Keyring`] implements it with local KEKs. A KMS implementation would call its service's
/// encrypt/decrypt with `key_id` and `aad` as the encryption context; its wrapped form must fit
/// [`MAX_WRAPPED_DEK_LEN`] bytes. Calls happen once per PUT and once per object read with a
/// cold DEK cache, so a remote KMS wants a cache of its own in front.
#[async_trait]
pub trait KmsProvider: Send + Sync + fmt::Debug + 'static {
    /// The key new data keys are wrapped with.
    fn current_key_id(&self) -> &str;
    /// Wraps `dek` under `key_id`, binding `aad`.
    async fn wrap(
        &self,
        key_id: &str,
        dek: &[u8; KEY_LEN],
        aad: &[u8],
    ) -> Result<Vec<u8>, KmsError>;
    /// Recovers a data key [`KmsProvider::wrap`] wrapped under `key_id` with the same `aad`.
    async fn unwrap(
        &self,
        key_id: &str,
        wrapped: &[u8],
        aad: &[u8],
    ) -> Result<[u8; KEY_LEN], KmsError>;
}

/// Key-encryption keys by id, one of them current (it wraps new data keys); every key in the
/// ring unwraps. `Debug` shows the ids, never key material.
pub struct Keyring {
    keks: HashMap<String, LessSafeKey>,
    current: String,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("ids", &self.ids())
            .finish()
    }
}

impl Keyring {
    /// A ring of `keys` (id, 32-byte key) wrapping with `current`.
    pub fn new(
        current: &str,
        keys: impl IntoIterator<Item = (String, [u8; KEY_LEN])>,
    ) -> Result<Keyring, String> {
        let mut keks = HashMap::new();
        for (id, bytes) in keys {
            if !valid_kek_id(&id) {
                return Err(format!(
                    "KEK ids are 1-{MAX_KEK_ID_LEN} characters of [A-Za-z0-9._-]"
                ));
            }
            if keks.insert(id.clone(), aes_key(&bytes)).is_some() {
                return Err(format!("duplicate KEK id {id:?}"));
            }
        }
        if !keks.contains_key(current) {
            return Err(format!("current KEK id {current:?} is not in the keyring"));
        }
        Ok(Keyring {
            keks,
            current: current.to_owned(),
        })
    }

    /// The keyring the settings describe; `Ok(None)` when encryption is not configured.
    ///
    /// - `object.encryption.keys`: comma-separated `ID=SOURCE`. An id is 1-64 characters of
    ///   `[A-Za-z0-9._-]`. SOURCE is `file:/path`, a file holding the 32-byte key raw, as 64 hex
    ///   characters or as base64 (standard alphabet; surrounding whitespace such as a trailing
    ///   newline is ignored for the text forms), or `env:VARNAME`, an environment variable
    ///   holding it as hex or base64.
    /// - `object.encryption.key.id`: the current KEK id, which wraps the data keys of new
    ///   objects. Must be in the ring; may be left out when the ring has exactly one key.
    ///
    /// Keys no longer current stay in the ring as long as objects wrapped by them exist.
    /// Errors name the setting and the problem, never key bytes.
    pub fn from_settings(get: impl Fn(&str) -> Option<String>) -> Result<Option<Keyring>, String> {
        Self::from_settings_with_env(get, |name| std::env::var(name).ok())
    }

    fn from_settings_with_env(
        get: impl Fn(&str) -> Option<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Keyring>, String> {
        let current = get(CURRENT_KEY_SETTING)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        let Some(entries) = get(KEYS_SETTING).filter(|s| !s.trim().is_empty()) else {
            return match current {
                Some(_) => Err(format!(
                    "{CURRENT_KEY_SETTING} is set but {KEYS_SETTING} is not"
                )),
                None => Ok(None),
            };
        };
        let mut keys = Vec::new();
        let mut seen = HashSet::new();
        for (n, entry) in entries
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            // Entries are not echoed: a key pasted in by mistake must not reach the logs.
            let Some((id, source)) = entry.split_once('=') else {
                return Err(format!("{KEYS_SETTING}: entry {} is not ID=SOURCE", n + 1));
            };
            let id = id.trim();
            if !valid_kek_id(id) {
                return Err(format!(
                    "{KEYS_SETTING}: entry {}: KEK ids are 1-{MAX_KEK_ID_LEN} characters of [A-Za-z0-9._-]",
                    n + 1
                ));
            }
            if !seen.insert(id.to_owned()) {
                return Err(format!("{KEYS_SETTING}: duplicate KEK id {id:?}"));
            }
            let key = load_key(source.trim(), &env)
                .map_err(|e| format!("{KEYS_SETTING}: key {id:?}: {e}"))?;
            keys.push((id.to_owned(), key));
        }
        let current = match (current, keys.as_slice()) {
            (Some(c), _) if seen.contains(&c) => c,
            (Some(c), _) => {
                return Err(format!(
                    "{CURRENT_KEY_SETTING}: {c:?} is not a key of {KEYS_SETTING}"
                ));
            }
            (None, [(only, _)]) => only.clone(),
            (None, []) => return Err(format!("{KEYS_SETTING} lists no keys")),
            (None, _) => {
                return Err(format!(
                    "{CURRENT_KEY_SETTING} must name the current key: {KEYS_SETTING} has {} keys",
                    keys.len()
                ));
            }
        };
        Keyring::new(&current, keys)
            .map(Some)
            .map_err(|e| format!("{KEYS_SETTING}: {e}"))
    }

    /// The id new objects are wrapped with.
    pub fn current_id(&self) -> &str {
        &self.current
    }

    /// Every id in the ring, sorted.
    pub fn ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.keks.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    fn kek(&self, key_id: &str) -> Result<&LessSafeKey, KmsError> {
        self.keks
            .get(key_id)
            .ok_or_else(|| KmsError::UnknownKey(key_id.to_owned()))
    }
}

#[async_trait]
impl KmsProvider for Keyring {
    fn current_key_id(&self) -> &str {
        &self.current
    }

    /// `nonce | AES-256-GCM(kek, dek) | tag`, with a random nonce: a KEK wraps one DEK per
    /// object, far below the 2^32 wraps random 96-bit nonces allow per key.
    async fn wrap(
        &self,
        key_id: &str,
        dek: &[u8; KEY_LEN],
        aad: &[u8],
    ) -> Result<Vec<u8>, KmsError> {
        let kek = self.kek(key_id)?;
        let mut nonce = [0u8; NONCE_LEN];
        random(&mut nonce).map_err(KmsError::Failed)?;
        let mut out = Vec::with_capacity(KEYRING_WRAPPED_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(dek);
        let tag = kek
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| KmsError::Failed("AES-GCM seal failed".into()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    async fn unwrap(
        &self,
        key_id: &str,
        wrapped: &[u8],
        aad: &[u8],
    ) -> Result<[u8; KEY_LEN], KmsError> {
        let kek = self.kek(key_id)?;
        let (nonce, sealed) = wrapped
            .split_first_chunk::<NONCE_LEN>()
            .filter(|(_, sealed)| sealed.len() == KEY_LEN + TAG_LEN)
            .ok_or_else(|| {
                KmsError::Failed(format!(
                    "wrapped data key has {} bytes, expected {KEYRING_WRAPPED_LEN}",
                    wrapped.len()
                ))
            })?;
        let mut buf = [0u8; KEY_LEN + TAG_LEN];
        buf.copy_from_slice(sealed); // same length: checked above
        let dek = kek
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| {
                KmsError::Failed(format!(
                    "the data key does not authenticate under KEK {key_id:?} (other key material, \
                     another cluster's or another key's object, or an altered header)"
                ))
            })?;
        <[u8; KEY_LEN]>::try_from(&*dek)
            .map_err(|_| KmsError::Failed("unwrapped data key has the wrong length".into()))
    }
}

/// An AES-256-GCM key. `UnboundKey::new` only fails on a key of the wrong length, which the
/// array type rules out.
fn aes_key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte key is a valid AES-256 key"),
    )
}

fn random(buf: &mut [u8]) -> Result<(), String> {
    aws_lc_rs::rand::fill(buf).map_err(|_| "the system random number generator failed".to_string())
}

/// A key from `file:/path` or `env:VARNAME`.
fn load_key(source: &str, env: &impl Fn(&str) -> Option<String>) -> Result<[u8; KEY_LEN], String> {
    if let Some(path) = source.strip_prefix("file:") {
        // Bounded read: a path such as /dev/urandom must fail, not fill the memory.
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(4096).read_to_end(&mut bytes))
            .map_err(|e| format!("cannot read {path}: {e}"))?;
        decode_key(&bytes, true).map_err(|e| format!("{path}: {e}"))
    } else if let Some(name) = source.strip_prefix("env:") {
        let value = env(name)
            .ok_or_else(|| format!("environment variable {name} is not set (or not UTF-8)"))?;
        decode_key(value.as_bytes(), false).map_err(|e| format!("environment variable {name}: {e}"))
    } else {
        Err("SOURCE must be file:/path or env:VARNAME".into())
    }
}

/// Decodes a 32-byte key given raw (files only), as 64 hex characters or as base64.
fn decode_key(bytes: &[u8], raw_allowed: bool) -> Result<[u8; KEY_LEN], String> {
    const EXPECTED: &str = "expected 32 raw bytes, 64 hex characters or base64 of 32 bytes";
    let key = match <[u8; KEY_LEN]>::try_from(bytes) {
        Ok(raw) if raw_allowed => {
            // 32 random bytes are all printable with probability ~1e-14: this is text (a
            // passphrase, a 128-bit key in hex), not a 256-bit key.
            if raw.iter().all(|b| (0x20..0x7f).contains(b)) {
                return Err(format!("32 characters of text: {EXPECTED}"));
            }
            raw
        }
        _ => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| format!("{} bytes that are not text: {EXPECTED}", bytes.len()))?
                .trim();
            if text.len() == 2 * KEY_LEN {
                decode_hex(text).ok_or_else(|| format!("64 characters but not hex: {EXPECTED}"))?
            } else {
                use base64::Engine;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|_| {
                        format!(
                            "{} characters, neither hex nor base64: {EXPECTED}",
                            text.len()
                        )
                    })?;
                <[u8; KEY_LEN]>::try_from(decoded.as_slice())
                    .map_err(|_| format!("base64 of {} bytes: {EXPECTED}", decoded.len()))?
            }
        }
    };
    if key.iter().all(|&b| b == 0) {
        return Err("the key is all zero bytes".into());
    }
    Ok(key)
}

fn decode_hex(text: &str) -> Option<[u8; KEY_LEN]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * KEY_LEN {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        let hi = char::from(*hi).to_digit(16)?;
        let lo = char::from(*lo).to_digit(16)?;
        *byte = u8::try_from(hi << 4 | lo).ok()?;
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Per-object ciphers and the DEK cache.

/// Seals or opens the chunks of one object (one DEK, one key).
struct ObjectCipher {
    /// The object key, for error messages.
    location: String,
    dek: LessSafeKey,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    /// Associated data common to all chunks: label, cluster id, object key.
    aad_prefix: Vec<u8>,
    layout: Layout,
}

impl ObjectCipher {
    fn new(
        location: &str,
        dek: &[u8; KEY_LEN],
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
        cluster_id: &[u8],
        layout: Layout,
    ) -> ObjectCipher {
        let mut aad_prefix = CHUNK_AAD_LABEL.to_vec();
        push_field(&mut aad_prefix, cluster_id);
        push_field(&mut aad_prefix, location.as_bytes());
        ObjectCipher {
            location: location.to_owned(),
            dek: aes_key(dek),
            nonce_prefix,
            aad_prefix,
            layout,
        }
    }

    fn nonce(&self, index: u64) -> Nonce {
        let mut n = [0u8; NONCE_LEN];
        let (prefix, counter) = n.split_at_mut(NONCE_PREFIX_LEN);
        prefix.copy_from_slice(&self.nonce_prefix);
        counter.copy_from_slice(&index.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    fn chunk_aad(&self, index: u64) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.aad_prefix.len() + 9);
        aad.extend_from_slice(&self.aad_prefix);
        aad.extend_from_slice(&index.to_be_bytes());
        aad.push(u8::from(self.layout.is_final(index)));
        aad
    }

    /// The whole encrypted object: `header`, then every chunk of `payload` sealed.
    fn seal(&self, header: &[u8], payload: &PutPayload) -> object_store::Result<Vec<u8>> {
        let total = usize::try_from(self.layout.ciphertext_len())
            .map_err(|_| generic(&self.location, "object too large for this platform"))?;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(header);
        let mut segments = payload.iter();
        let mut segment: &[u8] = &[];
        for index in 0..self.layout.chunks {
            let start = out.len();
            let mut need = self.layout.chunk_plain_len(index) as usize; // <= CHUNK_LEN
            while need > 0 {
                if segment.is_empty() {
                    segment = segments.next().ok_or_else(|| {
                        generic(&self.location, "payload shorter than its length")
                    })?;
                    continue;
                }
                let (head, rest) = segment.split_at(need.min(segment.len()));
                out.extend_from_slice(head);
                segment = rest;
                need -= head.len();
            }
            let tag = self
                .dek
                .seal_in_place_separate_tag(
                    self.nonce(index),
                    Aad::from(self.chunk_aad(index)),
                    &mut out[start..],
                )
                .map_err(|_| generic(&self.location, "AES-GCM seal failed"))?;
            out.extend_from_slice(tag.as_ref());
        }
        debug_assert_eq!(out.len(), total);
        Ok(out)
    }

    /// Decrypts chunk `index` in place, leaving its plaintext.
    fn open(&self, index: u64, chunk: &mut BytesMut) -> object_store::Result<()> {
        let len = self
            .dek
            .open_in_place(self.nonce(index), Aad::from(self.chunk_aad(index)), chunk)
            .map_err(|_| {
                decrypt_error(
                    &self.location,
                    format_args!(
                        "chunk {index} does not authenticate (altered, truncated, reordered, or \
                         another object's or cluster's bytes)"
                    ),
                )
            })?
            .len();
        chunk.truncate(len);
        Ok(())
    }
}

/// What reading one version of an object takes: its cipher (with the unwrapped DEK) and its
/// metadata as callers see it (plaintext size).
struct ReadKey {
    cipher: ObjectCipher,
    meta: ObjectMeta,
}

impl ReadKey {
    /// `raw` (from the inner store) describes the version this key was read from. An
    /// overwrite changes the size or the ETag (or version) whenever the store reports them.
    fn same_version(&self, raw: &ObjectMeta) -> bool {
        fn agree(a: &Option<String>, b: &Option<String>) -> bool {
            !matches!((a, b), (Some(a), Some(b)) if a != b)
        }
        raw.size == self.cipher.layout.ciphertext_len()
            && agree(&self.meta.e_tag, &raw.e_tag)
            && agree(&self.meta.version, &raw.version)
    }
}

/// Unwrapped DEKs of recently read objects by key, least recently used evicted first.
struct DekCache {
    capacity: usize,
    /// Bumped on every keyring swap: a key unwrapped under an older ring is not inserted, so
    /// a KEK removed from the ring stops decrypting at once.
    generation: u64,
    entries: HashMap<String, (Arc<ReadKey>, u64)>,
    /// Last use tick -> key; the smallest tick is the least recently used.
    by_use: BTreeMap<u64, String>,
    tick: u64,
}

impl DekCache {
    fn new(capacity: usize) -> DekCache {
        DekCache {
            capacity,
            generation: 0,
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            tick: 0,
        }
    }

    fn get(&mut self, key: &str) -> Option<Arc<ReadKey>> {
        self.tick += 1;
        let tick = self.tick;
        let (read_key, used) = self.entries.get_mut(key)?;
        let old = std::mem::replace(used, tick);
        let read_key = read_key.clone();
        self.by_use.remove(&old);
        self.by_use.insert(tick, key.to_owned());
        Some(read_key)
    }

    fn insert(&mut self, key: &str, read_key: Arc<ReadKey>, generation: u64) {
        if self.capacity == 0 || generation != self.generation {
            return;
        }
        self.tick += 1;
        if let Some((_, old)) = self.entries.insert(key.to_owned(), (read_key, self.tick)) {
            self.by_use.remove(&old);
        }
        self.by_use.insert(self.tick, key.to_owned());
        while self.entries.len() > self.capacity {
            let Some((_, k)) = self.by_use.pop_first() else {
                break;
            };
            self.entries.remove(&k);
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some((_, used)) = self.entries.remove(key) {
            self.by_use.remove(&used);
        }
    }

    fn reset(&mut self, generation: u64) {
        self.generation = generation;
        self.entries.clear();
        self.by_use.clear();
    }
}

// ---------------------------------------------------------------------------------------------
// The store.

struct Keys {
    provider: Arc<dyn KmsProvider>,
    generation: u64,
}

/// Encrypts the objects of `inner` (see the module docs).
pub struct EncryptedStore {
    inner: Arc<dyn ObjectStore>,
    cluster_id: Vec<u8>,
    keys: RwLock<Keys>,
    /// Shared with `delete_stream`'s stream, which outlives the call.
    cache: Arc<Mutex<DekCache>>,
}

impl EncryptedStore {
    /// Encrypts objects of `inner` with data keys wrapped by `keyring`. `cluster_id` (the
    /// metadata quorum's cluster id) is bound into every object: another cluster's objects,
    /// even under the same keys, do not decrypt. `dek_cache_entries` bounds the unwrapped DEKs
    /// kept for ranged reads (0: none, every ranged read also reads the header).
    pub fn new(
        inner: Arc<dyn ObjectStore>,
        cluster_id: impl Into<Vec<u8>>,
        keyring: Keyring,
        dek_cache_entries: usize,
    ) -> Arc<EncryptedStore> {
        Arc::new(EncryptedStore {
            inner,
            cluster_id: cluster_id.into(),
            keys: RwLock::new(Keys {
                provider: Arc::new(keyring),
                generation: 0,
            }),
            cache: Arc::new(Mutex::new(DekCache::new(dek_cache_entries))),
        })
    }

    /// Swaps the keyring atomically (online rotation): new objects are wrapped with its
    /// current KEK; objects wrapped by a KEK still in the ring keep decrypting. Reads in flight
    /// finish with the keys they have. Cached DEKs are dropped, so objects wrapped by a KEK
    /// left out of the new ring fail from now on ("unknown KEK id").
    pub fn set_keyring(&self, keyring: Keyring) {
        let new_current = keyring.current_id().to_owned();
        let ids = keyring.ids().join(",");
        let old_current = {
            let mut keys = self.keys.write();
            let old = std::mem::replace(&mut keys.provider, Arc::new(keyring));
            keys.generation += 1;
            self.cache.lock().reset(keys.generation);
            old.current_key_id().to_owned()
        };
        tracing::info!(
            old_current = %old_current,
            new_current = %new_current,
            kek_ids = %ids,
            "object encryption keyring rotated"
        );
    }

    /// The id of the KEK new objects are wrapped with.
    pub fn current_key_id(&self) -> String {
        self.keys.read().provider.current_key_id().to_owned()
    }

    /// The key provider and the generation it belongs to.
    fn keys(&self) -> (Arc<dyn KmsProvider>, u64) {
        let keys = self.keys.read();
        (keys.provider.clone(), keys.generation)
    }

    /// Encrypts `payload` for `location` under a fresh DEK.
    async fn encrypt(
        &self,
        location: &Path,
        payload: PutPayload,
    ) -> object_store::Result<PutPayload> {
        let key = location.as_ref();
        let (kms, _) = self.keys();
        let kek_id = kms.current_key_id().to_owned();
        let mut dek = [0u8; KEY_LEN];
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        random(&mut dek)
            .and_then(|()| random(&mut nonce_prefix))
            .map_err(|e| generic(key, e))?;
        let aad = dek_aad(&self.cluster_id, key, &kek_id, &nonce_prefix);
        let wrapped = kms.wrap(&kek_id, &dek, &aad).await.map_err(|e| {
            generic(
                key,
                format_args!("cannot wrap the data key with KEK {kek_id:?}: {e}"),
            )
        })?;
        kek_used(&kek_id, "wrap");
        let header =
            Header::encode(&kek_id, &nonce_prefix, &wrapped).map_err(|e| generic(key, e))?;
        let layout = Layout::for_plaintext(payload.content_length() as u64);
        let cipher = ObjectCipher::new(key, &dek, nonce_prefix, &self.cluster_id, layout);
        // AES-GCM runs at a few GB/s: a large compacted object takes tens of milliseconds,
        // too long for an async worker.
        let sealed = off_runtime(move || cipher.seal(&header, &payload)).await?;
        Ok(PutPayload::from(sealed))
    }

    /// Parses `header`, unwraps the DEK and caches it.
    async fn open_header(
        &self,
        key: &str,
        header: &[u8],
        raw: ObjectMeta,
        layout: Layout,
    ) -> object_store::Result<Arc<ReadKey>> {
        let (kms, generation) = self.keys();
        let h = Header::parse(header).map_err(|cause| decrypt_error(key, cause))?;
        let aad = dek_aad(&self.cluster_id, key, h.kek_id, &h.nonce_prefix);
        let dek = kms
            .unwrap(h.kek_id, h.wrapped, &aad)
            .await
            .map_err(|e| decrypt_error(key, e))?;
        // Counted after success only: an unknown id comes from the bucket and must not
        // become a metric label.
        kek_used(h.kek_id, "unwrap");
        let meta = ObjectMeta {
            size: layout.plain_len,
            ..raw
        };
        let read_key = Arc::new(ReadKey {
            cipher: ObjectCipher::new(key, &dek, h.nonce_prefix, &self.cluster_id, layout),
            meta,
        });
        self.cache.lock().insert(key, read_key.clone(), generation);
        Ok(read_key)
    }

    /// Reads the header of `location` (with the caller's preconditions) and unwraps its DEK.
    async fn fetch_header(
        &self,
        location: &Path,
        options: &GetOptions,
    ) -> object_store::Result<Arc<ReadKey>> {
        let key = location.as_ref();
        let opts = GetOptions {
            range: Some(GetRange::Bounded(0..HEADER)),
            head: false,
            ..options.clone()
        };
        let r = self.inner.get_opts(location, opts).await?;
        let layout = layout_of(key, r.meta.size)?;
        let raw = r.meta.clone();
        let header = r.bytes().await?;
        self.open_header(key, &header, raw, layout).await
    }

    async fn get_whole(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let key = location.as_ref();
        let mut r = self.inner.get_opts(location, options).await?;
        let layout = layout_of(key, r.meta.size)?;
        if r.range != (0..r.meta.size) {
            return Err(generic(
                key,
                format_args!("store returned bytes {:?} of a whole-object GET", r.range),
            ));
        }
        let raw = r.meta.clone();
        let attributes = std::mem::take(&mut r.attributes);
        let extensions = std::mem::take(&mut r.extensions);
        let mut body = Body::new(r.into_stream());
        let header = body.read_exact(HEADER_LEN, key).await?;
        let read_key = self.open_header(key, &header, raw, layout).await?;
        Ok(GetResult {
            meta: read_key.meta.clone(),
            range: 0..layout.plain_len,
            payload: decrypting(read_key, body, 0..layout.chunks, 0, layout.plain_len),
            attributes,
            extensions,
        })
    }

    async fn get_part(
        &self,
        location: &Path,
        options: GetOptions,
        range: GetRange,
    ) -> object_store::Result<GetResult> {
        let key = location.as_ref();
        // A cached DEK may be of an overwritten version: the response tells (size, ETag), and
        // the read starts over once with the current header.
        let mut retried = false;
        loop {
            let cached = self.cache.lock().get(key);
            let read_key = match cached {
                Some(k) => k,
                None => self.fetch_header(location, &options).await?,
            };
            let layout = read_key.cipher.layout;
            let plain = range
                .as_range(layout.plain_len)
                .map_err(|e| generic(key, format_args!("invalid range {range}: {e}")))?;
            if plain.is_empty() {
                return Ok(GetResult {
                    meta: read_key.meta.clone(),
                    range: plain,
                    payload: GetResultPayload::Stream(futures::stream::empty().boxed()),
                    attributes: Default::default(),
                    extensions: Default::default(),
                });
            }
            let (chunks, ciphertext) = layout.span(&plain);
            let opts = GetOptions {
                range: Some(GetRange::Bounded(ciphertext.clone())),
                ..options.clone()
            };
            let mut r = self.inner.get_opts(location, opts).await?;
            if !read_key.same_version(&r.meta) {
                self.cache.lock().remove(key);
                if retried {
                    return Err(generic(key, "object changed while being read"));
                }
                retried = true;
                continue;
            }
            if r.range != ciphertext {
                return Err(generic(
                    key,
                    format_args!("store returned bytes {:?} for {ciphertext:?}", r.range),
                ));
            }
            let attributes = std::mem::take(&mut r.attributes);
            let extensions = std::mem::take(&mut r.extensions);
            let body = Body::new(r.into_stream());
            let skip = plain.start - chunks.start * CHUNK_LEN;
            let len = plain.end - plain.start;
            return Ok(GetResult {
                meta: read_key.meta.clone(),
                range: plain,
                payload: decrypting(read_key, body, chunks, skip, len),
                attributes,
                extensions,
            });
        }
    }
}

impl fmt::Debug for EncryptedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("inner", &format_args!("{}", self.inner))
            .field("keys", &self.keys.read().provider)
            .field("cached_deks", &self.cache.lock().entries.len())
            .finish()
    }
}

impl fmt::Display for EncryptedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Encrypted({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for EncryptedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let sealed = self.encrypt(location, payload).await?;
        let r = self.inner.put_opts(location, sealed, opts).await;
        // Whatever the outcome, a DEK cached for this key may be of an older object.
        self.cache.lock().remove(location.as_ref());
        r
    }

    /// Not supported: an object is sealed whole (its size fixes the chunk layout and the final
    /// chunk's flag), and nothing in Shale uploads in parts. Use `put`.
    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(object_store::Error::NotSupported {
            source: format!(
                "{STORE}: multipart upload of {location}: encrypted objects are written whole \
                 with put"
            )
            .into(),
        })
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.head {
            let r = self
                .inner
                .get_opts(
                    location,
                    GetOptions {
                        range: None,
                        ..options
                    },
                )
                .await?;
            let layout = layout_of(location.as_ref(), r.meta.size)?;
            return Ok(GetResult {
                meta: ObjectMeta {
                    size: layout.plain_len,
                    ..r.meta
                },
                range: 0..layout.plain_len,
                payload: GetResultPayload::Stream(futures::stream::empty().boxed()),
                attributes: r.attributes,
                extensions: r.extensions,
            });
        }
        match options.range.clone() {
            None => self.get_whole(location, options).await,
            Some(range) => self.get_part(location, options, range).await,
        }
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        // One header read up front, so the coalesced fetches below all find the DEK cached.
        let warm = {
            let mut cache = self.cache.lock();
            cache.capacity == 0 || cache.get(location.as_ref()).is_some()
        };
        if !warm && !ranges.is_empty() {
            self.fetch_header(location, &GetOptions::default()).await?;
        }
        coalesce_ranges(
            ranges,
            |r| self.get_range(location, r),
            OBJECT_STORE_COALESCE_DEFAULT,
        )
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let cache = self.cache.clone();
        self.inner
            .delete_stream(locations)
            .inspect_ok(move |p| cache.lock().remove(p.as_ref()))
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix).map_ok(listed).boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner
            .list_with_offset(prefix, offset)
            .map_ok(listed)
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut r = self.inner.list_with_delimiter(prefix).await?;
        r.objects = r.objects.into_iter().map(listed).collect();
        Ok(r)
    }

    /// Re-encrypts: the object key is bound into the ciphertext, so the bytes cannot simply
    /// be copied. Attributes are kept, tags are not (GETs do not return them). Renames use the
    /// trait's default, this copy then a delete.
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let source = self.get(from).await?;
        let attributes = source.attributes.clone();
        let data = source.bytes().await?;
        let mode = match options.mode {
            CopyMode::Overwrite => PutMode::Overwrite,
            CopyMode::Create => PutMode::Create,
        };
        let opts = PutOptions {
            mode,
            attributes,
            extensions: options.extensions,
            ..PutOptions::default()
        };
        self.put_opts(to, data.into(), opts).await.map(|_| ())
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming decryption.

/// The ciphertext a GET streams, read in exact pieces.
struct Body {
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    pending: Bytes,
}

impl Body {
    fn new(stream: BoxStream<'static, object_store::Result<Bytes>>) -> Body {
        Body {
            stream,
            pending: Bytes::new(),
        }
    }

    /// The next `n` bytes, copied into a buffer of their own (a chunk is decrypted in place).
    /// `n` is a header or chunk length, never a length read from the object.
    async fn read_exact(&mut self, n: usize, key: &str) -> object_store::Result<BytesMut> {
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            if self.pending.is_empty() {
                match self.stream.next().await {
                    Some(bytes) => self.pending = bytes?,
                    None => {
                        return Err(generic(
                            key,
                            "response ended before the bytes its range promised",
                        ));
                    }
                }
                continue;
            }
            let take = (n - out.len()).min(self.pending.len());
            out.extend_from_slice(&self.pending.split_to(take));
        }
        Ok(out)
    }
}

/// Decrypts `chunks` from `body` one at a time, yielding `len` plaintext bytes after skipping
/// `skip` bytes of the first chunk. Memory: one chunk, plus what the store hands over.
fn decrypting(
    read_key: Arc<ReadKey>,
    body: Body,
    chunks: Range<u64>,
    skip: u64,
    len: u64,
) -> GetResultPayload {
    struct State {
        read_key: Arc<ReadKey>,
        body: Body,
        next: u64,
        end: u64,
        skip: usize,
        remaining: u64,
    }
    let state = State {
        read_key,
        body,
        next: chunks.start,
        end: chunks.end,
        skip: skip as usize, // < CHUNK_LEN
        remaining: len,
    };
    let stream = futures::stream::try_unfold(state, |mut s| async move {
        // Every chunk of the span is verified, even one that yields no byte: the empty final
        // chunk of an empty object is what tells it from a truncated one.
        if s.next >= s.end {
            return Ok(None);
        }
        let cipher = &s.read_key.cipher;
        let mut chunk = s
            .body
            .read_exact(cipher.layout.chunk_ciphertext_len(s.next), &cipher.location)
            .await?;
        cipher.open(s.next, &mut chunk)?;
        let mut plain = chunk.freeze();
        plain.advance(s.skip.min(plain.len()));
        plain.truncate(usize::try_from(s.remaining).unwrap_or(usize::MAX));
        s.skip = 0;
        s.remaining -= plain.len() as u64;
        s.next += 1;
        Ok(Some((plain, s)))
    });
    GetResultPayload::Stream(stream.boxed())
}

// ---------------------------------------------------------------------------------------------
// Helpers: sizes, errors, metrics.

/// The layout of the object at `key` from its size in the bucket.
fn layout_of(key: &str, raw_size: u64) -> object_store::Result<Layout> {
    Layout::from_ciphertext_len(raw_size).ok_or_else(|| {
        decrypt_error(
            key,
            format_args!("{raw_size} bytes is not the size of an encrypted object"),
        )
    })
}

/// Listing metadata as callers see it. An object whose size no encrypted object has (not
/// written through this store) is listed as empty, with a warning, rather than failing the
/// whole listing: the garbage collector lists to delete, and one stray object must not stop it.
/// Reading it fails.
fn listed(mut meta: ObjectMeta) -> ObjectMeta {
    match Layout::from_ciphertext_len(meta.size) {
        Some(layout) => meta.size = layout.plain_len,
        None => {
            tracing::warn!(
                key = %meta.location,
                size = meta.size,
                "object is not an encrypted object; listed as empty"
            );
            meta.size = 0;
        }
    }
    meta
}

/// Runs `f` on the blocking pool when in a Tokio runtime.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> object_store::Result<T> + Send + 'static,
) -> object_store::Result<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => rt
            .spawn_blocking(f)
            .await
            .map_err(|e| object_store::Error::Generic {
                store: STORE,
                source: Box::new(e),
            })?,
        Err(_) => f(),
    }
}

fn generic(key: &str, message: impl fmt::Display) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: format!("{key}: {message}").into(),
    }
}

/// An object that does not decrypt: tampered with, corrupt, another cluster's, or wrapped by
/// a KEK not in the ring.
fn decrypt_error(key: &str, cause: impl fmt::Display) -> object_store::Error {
    metrics::counter!("shale_object_encryption_failures_total").increment(1);
    generic(key, format_args!("cannot decrypt: {cause}"))
}

fn kek_used(kek_id: &str, op: &'static str) {
    metrics::counter!("shale_kek_use_total", "kek_id" => kek_id.to_owned(), "op" => op)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metered::MeteredStore;
    use object_store::memory::InMemory;
    use object_store::{Error, UpdateVersion};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use shale_testkit::faulty::{FaultyStore, Op};

    const CLUSTER: &[u8] = b"cluster-a";
    const C: usize = CHUNK_LEN as usize;

    /// A test KEK derived from its id.
    fn kek(id: &str) -> [u8; KEY_LEN] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
        d.as_ref().try_into().unwrap()
    }

    fn ring(ids: &[&str], current: &str) -> Keyring {
        Keyring::new(current, ids.iter().map(|id| (id.to_string(), kek(id)))).unwrap()
    }

    fn encrypted(raw: &Arc<InMemory>, cluster: &[u8], cache: usize) -> Arc<EncryptedStore> {
        EncryptedStore::new(raw.clone(), cluster, ring(&["a"], "a"), cache)
    }

    fn bucket() -> (Arc<InMemory>, Arc<EncryptedStore>) {
        let raw = Arc::new(InMemory::new());
        let store = encrypted(&raw, CLUSTER, DEFAULT_DEK_CACHE_ENTRIES);
        (raw, store)
    }

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; len];
        StdRng::seed_from_u64(seed).fill(&mut v[..]);
        v
    }

    async fn put(s: &dyn ObjectStore, key: &str, bytes: &[u8]) {
        s.put(&Path::from(key), Bytes::copy_from_slice(bytes).into())
            .await
            .unwrap();
    }

    async fn get(s: &dyn ObjectStore, key: &str) -> object_store::Result<Bytes> {
        s.get(&Path::from(key)).await?.bytes().await
    }

    async fn get_part(
        s: &dyn ObjectStore,
        key: &str,
        range: GetRange,
    ) -> object_store::Result<Bytes> {
        let opts = GetOptions {
            range: Some(range),
            ..GetOptions::default()
        };
        s.get_opts(&Path::from(key), opts).await?.bytes().await
    }

    /// Asserts `r` is a decryption failure naming `key`; returns the message.
    fn decrypt_failure<T: fmt::Debug>(r: object_store::Result<T>, key: &str) -> String {
        let e = r.expect_err("must not decrypt");
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                Error::Generic {
                    store: "EncryptedStore",
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains(key), "{msg}");
        msg
    }

    #[test]
    fn ciphertext_and_plaintext_sizes_determine_each_other() {
        let mut rng = StdRng::seed_from_u64(1);
        let sizes = [0, 1, C - 1, C, C + 1, 2 * C, 5 * C + 7]
            .into_iter()
            .map(|s| s as u64);
        for p in sizes.chain((0..1000).map(|_| rng.random_range(0..1u64 << 40))) {
            let l = Layout::for_plaintext(p);
            assert_eq!(
                Layout::from_ciphertext_len(l.ciphertext_len()),
                Some(l),
                "{p}"
            );
        }
        // Every size is either impossible or the size of exactly the plaintext it maps to.
        for len in 0..HEADER + 3 * STRIDE + 40 {
            if let Some(l) = Layout::from_ciphertext_len(len) {
                assert_eq!(l.ciphertext_len(), len);
            }
        }
        assert_eq!(Layout::from_ciphertext_len(HEADER), None, "no final chunk");
        assert_eq!(
            Layout::from_ciphertext_len(HEADER + TAG),
            Some(Layout::for_plaintext(0))
        );
        assert_eq!(
            Layout::from_ciphertext_len(HEADER + STRIDE + TAG),
            None,
            "empty chunk after a full one"
        );
        // Overhead: the header and one tag per chunk.
        assert_eq!(
            Layout::for_plaintext(10 * CHUNK_LEN).ciphertext_len(),
            256 + 10 * CHUNK_LEN + 160
        );
        assert_eq!(TAG_LEN, AES_256_GCM.tag_len());
    }

    #[test]
    fn header_parsing_rejects_malformed_headers_without_panicking() {
        let good = Header::encode("kek-1", &[1, 2, 3, 4], &[7; 60]).unwrap();
        assert_eq!(good.len(), HEADER_LEN);
        let h = Header::parse(&good).unwrap();
        assert_eq!(
            (h.kek_id, h.nonce_prefix, h.wrapped),
            ("kek-1", [1, 2, 3, 4], &[7u8; 60][..])
        );
        for len in 0..HEADER_LEN {
            assert!(Header::parse(&good[..len]).is_err(), "{len}");
        }
        let with = |at: usize, bytes: &[u8]| {
            let mut h = good.clone();
            h[at..at + bytes.len()].copy_from_slice(bytes);
            Header::parse(&h).err()
        };
        assert_eq!(
            with(0, b"XXXX"),
            Some("not an encrypted object (bad magic)")
        );
        assert_eq!(with(4, &[2]), Some("unsupported format version"));
        for id_len in [0, 4, 6, 65, 255] {
            assert_eq!(with(5, &[id_len]), Some("malformed KEK id"), "{id_len}");
        }
        assert_eq!(with(6, b"k,"), Some("malformed KEK id"));
        assert_eq!(with(6 + 40, &[1]), Some("malformed KEK id"), "padding");
        // 59: its last byte becomes non-zero padding.
        for wrapped_len in [0u16, 59, 181, u16::MAX] {
            let r = with(74, &wrapped_len.to_be_bytes());
            assert_eq!(r, Some("malformed wrapped data key"), "{wrapped_len}");
        }
        // 61 takes in a padding byte: it parses, and unwrapping rejects the length.
        assert!(with(74, &61u16.to_be_bytes()).is_none());
        assert_eq!(
            with(255, &[1]),
            Some("malformed wrapped data key"),
            "padding"
        );
        assert!(Header::encode("", &[0; 4], &[1]).is_err());
        assert!(Header::encode("a=b", &[0; 4], &[1]).is_err());
        assert!(Header::encode(&"k".repeat(65), &[0; 4], &[1]).is_err());
        assert!(Header::encode("a", &[0; 4], &[]).is_err());
        assert!(Header::encode("a", &[0; 4], &[1; MAX_WRAPPED_DEK_LEN + 1]).is_err());
        assert!(Header::encode(&"k".repeat(64), &[0; 4], &[1; MAX_WRAPPED_DEK_LEN]).is_ok());
    }

    #[tokio::test]
    async fn objects_of_every_boundary_size_round_trip() {
        let (raw, store) = bucket();
        for (seed, len) in [0, 1, C - 1, C, C + 1, 4 * C, 3 * C + 1234]
            .into_iter()
            .enumerate()
        {
            let key = format!("obj/{len}");
            let path = Path::from(key.as_str());
            let plain = data(len, seed as u64);
            put(&*store, &key, &plain).await;
            let r = store.get(&path).await.unwrap();
            assert_eq!((r.meta.size, r.range.clone()), (len as u64, 0..len as u64));
            assert_eq!(r.bytes().await.unwrap(), plain, "{len}");
            assert_eq!(store.head(&path).await.unwrap().size, len as u64);
            let stored = raw.head(&path).await.unwrap().size;
            assert_eq!(stored, Layout::for_plaintext(len as u64).ciphertext_len());
        }
        // A payload in several segments is sealed across segment and chunk boundaries.
        let plain = data(2 * C + 10, 9);
        let segments = [
            &plain[..10],
            &plain[10..C + 1],
            &plain[C + 1..C + 2],
            &plain[C + 2..],
        ];
        let payload: PutPayload = segments.iter().map(|s| Bytes::copy_from_slice(s)).collect();
        store
            .put(&Path::from("obj/segments"), payload)
            .await
            .unwrap();
        assert_eq!(get(&*store, "obj/segments").await.unwrap(), plain);
    }

    #[tokio::test]
    async fn every_range_shape_at_chunk_boundaries_returns_the_plaintext_bytes() {
        let raw = Arc::new(InMemory::new());
        let len = 3 * C + 100;
        let plain = data(len, 3);
        // With cached DEKs (one GET per read) and without (header first).
        let warm = encrypted(&raw, CLUSTER, 16);
        let cold = encrypted(&raw, CLUSTER, 0);
        put(&*warm, "r/x", &plain).await;
        let points = [
            0,
            1,
            C - 1,
            C,
            C + 1,
            2 * C - 1,
            2 * C,
            2 * C + 1,
            3 * C,
            3 * C + 1,
            len - 1,
            len,
        ];
        for store in [&warm, &cold] {
            let s = &**store;
            for &a in &points {
                for &b in points.iter().filter(|&&b| b > a) {
                    let got = get_part(s, "r/x", GetRange::Bounded(a as u64..b as u64)).await;
                    assert_eq!(got.unwrap(), plain[a..b], "{a}..{b}");
                }
                if a < len {
                    let past_end = GetRange::Bounded(a as u64..len as u64 + 10);
                    assert_eq!(
                        get_part(s, "r/x", past_end).await.unwrap(),
                        plain[a..],
                        "{a}.."
                    );
                    let offset = GetRange::Offset(a as u64);
                    assert_eq!(
                        get_part(s, "r/x", offset).await.unwrap(),
                        plain[a..],
                        "{a}.."
                    );
                }
            }
            for n in [0, 1, C - 1, C, C + 1, len - 1, len, len + 5] {
                let got = get_part(s, "r/x", GetRange::Suffix(n as u64))
                    .await
                    .unwrap();
                assert_eq!(got, plain[len.saturating_sub(n)..], "suffix {n}");
            }
            let opts = GetOptions {
                range: Some(GetRange::Bounded(C as u64 - 1..2 * C as u64 + 1)),
                ..GetOptions::default()
            };
            let r = s.get_opts(&Path::from("r/x"), opts).await.unwrap();
            assert_eq!(
                (r.meta.size, r.range.clone()),
                (len as u64, C as u64 - 1..2 * C as u64 + 1)
            );
            let ranges = [
                0..1,
                C as u64 - 1..C as u64 + 1,
                2 * C as u64..3 * C as u64 + 1,
                len as u64 - 1..len as u64 + 9,
            ];
            let parts = s.get_ranges(&Path::from("r/x"), &ranges).await.unwrap();
            for (r, part) in ranges.iter().zip(parts) {
                let end = (r.end as usize).min(len);
                assert_eq!(part, plain[r.start as usize..end], "{r:?}");
            }
            // Out of range, as the inner store on the plaintext.
            assert!(
                get_part(s, "r/x", GetRange::Bounded(len as u64..len as u64 + 1))
                    .await
                    .is_err()
            );
            assert!(
                get_part(s, "r/x", GetRange::Offset(len as u64))
                    .await
                    .is_err()
            );
        }
    }

    #[tokio::test]
    async fn random_ranges_behave_as_on_the_plaintext_in_a_plain_store() {
        let mut rng = StdRng::seed_from_u64(0x5a1e);
        let raw = Arc::new(InMemory::new());
        let reference = InMemory::new();
        let stores = [encrypted(&raw, CLUSTER, 4), encrypted(&raw, CLUSTER, 0)];
        for (i, len) in [0, 1, 5000, C, 2 * C + 3, 5 * C + 77]
            .into_iter()
            .enumerate()
        {
            let key = format!("rand/{len}");
            let plain = data(len, i as u64);
            put(&*stores[0], &key, &plain).await;
            put(&reference, &key, &plain).await;
            let span = len as u64 + CHUNK_LEN;
            for _ in 0..150 {
                let start = rng.random_range(0..=len as u64);
                let range = match rng.random_range(0..3) {
                    0 => GetRange::Bounded(start..rng.random_range(start + 1..=start + span)),
                    1 => GetRange::Offset(start),
                    _ => GetRange::Suffix(rng.random_range(0..=span)),
                };
                let store = &stores[rng.random_range(0..2)];
                let want = get_part(&reference, &key, range.clone()).await;
                let got = get_part(&**store, &key, range.clone()).await;
                match (want, got) {
                    (Ok(w), Ok(g)) => assert_eq!(w, g, "{key} {range}"),
                    (Err(_), Err(_)) => {}
                    (w, g) => panic!("{key} {range}: plain {w:?}, encrypted {g:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn head_and_list_report_plaintext_sizes() {
        let (raw, store) = bucket();
        let sizes = [("d/a", 0), ("d/b", 10), ("d/c", C + 1), ("d/sub/x", 2 * C)];
        for (key, len) in sizes {
            put(&*store, key, &data(len, 1)).await;
        }
        put(&*store, "other/y", b"elsewhere").await;
        let want: HashMap<String, u64> = sizes
            .iter()
            .map(|(k, l)| (k.to_string(), *l as u64))
            .collect();
        let listed: Vec<ObjectMeta> = store
            .list(Some(&Path::from("d")))
            .try_collect()
            .await
            .unwrap();
        let got: HashMap<String, u64> = listed
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect();
        assert_eq!(got, want);
        let after_a: Vec<ObjectMeta> = store
            .list_with_offset(Some(&Path::from("d")), &Path::from("d/a"))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(after_a.len(), 3);
        assert!(after_a.iter().all(|m| want[m.location.as_ref()] == m.size));
        let top = store
            .list_with_delimiter(Some(&Path::from("d")))
            .await
            .unwrap();
        assert_eq!(top.common_prefixes, vec![Path::from("d/sub")]);
        let top: Vec<(String, u64)> = top
            .objects
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect();
        assert_eq!(
            top,
            vec![
                ("d/a".into(), 0),
                ("d/b".into(), 10),
                ("d/c".into(), C as u64 + 1)
            ]
        );
        for (key, len) in sizes {
            assert_eq!(store.head(&Path::from(key)).await.unwrap().size, len as u64);
        }
        assert_eq!(
            raw.head(&Path::from("d/b")).await.unwrap().size,
            256 + 10 + 16
        );
        // A stray object no encrypted object could be does not stop a listing (GC lists to
        // delete); reading it fails.
        raw.put(&Path::from("d/stray"), "plain".into())
            .await
            .unwrap();
        let listed: Vec<ObjectMeta> = store
            .list(Some(&Path::from("d")))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(
            listed
                .iter()
                .find(|m| m.location.as_ref() == "d/stray")
                .map(|m| m.size),
            Some(0)
        );
        decrypt_failure(store.head(&Path::from("d/stray")).await, "d/stray");
        decrypt_failure(get(&*store, "d/stray").await, "d/stray");
    }

    #[tokio::test]
    async fn the_bucket_holds_no_plaintext_and_every_object_has_its_own_data_key() {
        let (raw, store) = bucket();
        let marker = b"SHALE-PLAINTEXT-MARKER";
        let plain = marker.repeat(3 * C / marker.len());
        put(&*store, "m/1", &plain).await;
        put(&*store, "m/2", &plain).await;
        let one = get(&*raw, "m/1").await.unwrap();
        let two = get(&*raw, "m/2").await.unwrap();
        for stored in [&one, &two] {
            assert!(stored.starts_with(&MAGIC));
            assert!(
                !stored.windows(8).any(|w| w == &marker[..8]),
                "plaintext in the bucket"
            );
        }
        assert_ne!(
            one[HEADER_LEN..HEADER_LEN + 64],
            two[HEADER_LEN..HEADER_LEN + 64]
        );
        assert_eq!(get(&*store, "m/2").await.unwrap(), plain);
    }

    #[tokio::test]
    async fn swapped_objects_and_reordered_chunks_fail_to_decrypt() {
        let (raw, store) = bucket();
        let len = 2 * C + 5;
        put(&*store, "s/a", &data(len, 1)).await;
        put(&*store, "s/b", &data(len, 2)).await;
        // Warm the DEK cache: the swap must be noticed all the same.
        get_part(&*store, "s/a", GetRange::Bounded(0..10))
            .await
            .unwrap();
        let (a, b) = (
            get(&*raw, "s/a").await.unwrap(),
            get(&*raw, "s/b").await.unwrap(),
        );
        put(&*raw, "s/a", &b).await;
        put(&*raw, "s/b", &a).await;
        for key in ["s/a", "s/b"] {
            let msg = decrypt_failure(get(&*store, key).await, key);
            assert!(msg.contains("does not authenticate"), "{msg}");
            decrypt_failure(
                get_part(&*store, key, GetRange::Bounded(C as u64..C as u64 + 1)).await,
                key,
            );
        }
        // Chunks 0 and 1 of one object swapped, its header intact.
        let mut reordered = a.to_vec();
        let (chunk0, rest) = reordered[HEADER_LEN..].split_at_mut(STRIDE as usize);
        chunk0.swap_with_slice(&mut rest[..STRIDE as usize]);
        put(&*raw, "s/a", &reordered).await;
        let msg = decrypt_failure(
            get_part(&*store, "s/a", GetRange::Bounded(0..1)).await,
            "s/a",
        );
        assert!(msg.contains("chunk 0 does not authenticate"), "{msg}");
        put(&*raw, "s/a", &a).await;
        assert_eq!(get(&*store, "s/a").await.unwrap(), data(len, 1));
    }

    #[tokio::test]
    async fn flipping_any_byte_fails_to_decrypt() {
        let (raw, store) = bucket();
        let len = 2 * C + 100;
        put(&*store, "f/x", &data(len, 5)).await;
        let good = get(&*raw, "f/x").await.unwrap();
        // Every header byte, and in each chunk its first bytes, middle, last plaintext byte
        // and every tag byte.
        let mut positions: Vec<usize> = (0..HEADER_LEN).collect();
        let layout = Layout::for_plaintext(len as u64);
        for i in 0..layout.chunks {
            let start = HEADER_LEN + i as usize * STRIDE as usize;
            let end = start + layout.chunk_ciphertext_len(i);
            positions.extend([start, start + 1, (start + end) / 2]);
            positions.extend(end - TAG_LEN - 1..end);
        }
        for pos in positions {
            let mut bad = good.to_vec();
            bad[pos] ^= 0x01;
            put(&*raw, "f/x", &bad).await;
            decrypt_failure(get(&*store, "f/x").await, "f/x");
            if pos >= HEADER_LEN {
                let chunk = ((pos - HEADER_LEN) / STRIDE as usize) as u64;
                let range = GetRange::Bounded(chunk * CHUNK_LEN..chunk * CHUNK_LEN + 1);
                decrypt_failure(get_part(&*store, "f/x", range).await, "f/x");
            }
        }
        put(&*raw, "f/x", &good).await;
        assert_eq!(get(&*store, "f/x").await.unwrap(), data(len, 5));
    }

    #[tokio::test]
    async fn truncated_or_extended_objects_fail_to_decrypt() {
        let (raw, store) = bucket();
        put(&*store, "t/x", &data(2 * C, 6)).await;
        put(&*store, "t/empty", b"").await;
        let good = get(&*raw, "t/x").await.unwrap().to_vec();
        let empty = get(&*raw, "t/empty").await.unwrap().to_vec();
        let one_chunk = HEADER_LEN + STRIDE as usize;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("nothing", vec![]),
            ("part of the header", good[..10].to_vec()),
            ("the header alone", good[..HEADER_LEN].to_vec()),
            (
                "as long as an empty object",
                good[..HEADER_LEN + TAG_LEN].to_vec(),
            ),
            // A valid size for one chunk: only the final-chunk flag tells.
            ("the first chunk alone", good[..one_chunk].to_vec()),
            ("one byte short", good[..good.len() - 1].to_vec()),
            ("a tag's length more", [&good[..], &[0; TAG_LEN]].concat()),
            (
                "the last chunk twice",
                [&good[..], &good[one_chunk..]].concat(),
            ),
            (
                "an empty object's header alone",
                empty[..HEADER_LEN].to_vec(),
            ),
        ];
        for (what, bytes) in cases {
            put(&*raw, "t/x", &bytes).await;
            let msg = decrypt_failure(get(&*store, "t/x").await, "t/x");
            assert!(msg.contains("cannot decrypt"), "{what}: {msg}");
        }
        put(&*raw, "t/x", &good[..one_chunk]).await;
        let msg = decrypt_failure(
            get_part(&*store, "t/x", GetRange::Bounded(0..1)).await,
            "t/x",
        );
        assert!(msg.contains("chunk 0 does not authenticate"), "{msg}");
    }

    #[tokio::test]
    async fn an_object_written_for_another_cluster_fails_to_decrypt() {
        let raw = Arc::new(InMemory::new());
        let ours = encrypted(&raw, b"cluster-a", 16);
        let theirs = encrypted(&raw, b"cluster-b", 16);
        put(&*ours, "c/x", &data(C + 3, 7)).await;
        let msg = decrypt_failure(get(&*theirs, "c/x").await, "c/x");
        assert!(msg.contains("does not authenticate"), "{msg}");
        decrypt_failure(
            get_part(&*theirs, "c/x", GetRange::Offset(C as u64)).await,
            "c/x",
        );
        assert_eq!(get(&*ours, "c/x").await.unwrap(), data(C + 3, 7));
    }

    #[tokio::test]
    async fn conditional_puts_and_gets_pass_their_errors_through() {
        let (_, store) = bucket();
        let path = Path::from("w/1");
        let create = || PutOptions::from(PutMode::Create);
        store
            .put_opts(&path, "first".into(), create())
            .await
            .unwrap();
        let again = store.put_opts(&path, "second".into(), create()).await;
        assert!(
            matches!(again, Err(Error::AlreadyExists { .. })),
            "{again:?}"
        );
        assert_eq!(get(&*store, "w/1").await.unwrap(), "first");
        let stale = UpdateVersion {
            e_tag: Some("\"nope\"".into()),
            version: None,
        };
        let r = store
            .put_opts(&path, "x".into(), PutMode::Update(stale).into())
            .await;
        assert!(matches!(r, Err(Error::Precondition { .. })), "{r:?}");
        let e_tag = store.head(&path).await.unwrap().e_tag;
        let current = UpdateVersion {
            e_tag: e_tag.clone(),
            version: None,
        };
        store
            .put_opts(&path, "third".into(), PutMode::Update(current).into())
            .await
            .unwrap();
        assert_eq!(get(&*store, "w/1").await.unwrap(), "third");
        for range in [None, Some(GetRange::Bounded(1..3))] {
            let opts = GetOptions {
                if_match: e_tag.clone(),
                range,
                ..GetOptions::default()
            };
            let r = store.get_opts(&path, opts).await;
            assert!(matches!(r, Err(Error::Precondition { .. })), "{r:?}");
        }
        let copy = store.copy_if_not_exists(&Path::from("w/1"), &path).await;
        assert!(matches!(copy, Err(Error::AlreadyExists { .. })), "{copy:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keyring_rotation_keeps_every_read_working_and_removing_a_key_revokes_it() {
        let raw = Arc::new(InMemory::new());
        let store = encrypted(&raw, CLUSTER, 16); // ring {a}, current a
        let old: Vec<String> = (0..6).map(|i| format!("k/old{i}")).collect();
        for (i, key) in old.iter().enumerate() {
            put(&*store, key, &data(C + 1 + i, i as u64)).await;
        }
        // Readers run through the swap; none of their reads may fail.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (store, stop, old) = (store.clone(), stop.clone(), old.clone());
                tokio::spawn(async move {
                    let mut reads = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                        for (i, key) in old.iter().enumerate() {
                            assert_eq!(get(&*store, key).await.unwrap(), data(C + 1 + i, i as u64));
                            let part = get_part(
                                &*store,
                                key,
                                GetRange::Bounded(C as u64 - 1..C as u64 + 1),
                            )
                            .await;
                            assert_eq!(part.unwrap(), data(C + 1 + i, i as u64)[C - 1..C + 1]);
                            reads += 2;
                        }
                        // The in-memory store never returns Pending: let the timer run.
                        tokio::task::yield_now().await;
                    }
                    reads
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        store.set_keyring(ring(&["a", "b"], "b"));
        let new: Vec<String> = (0..3).map(|i| format!("k/new{i}")).collect();
        for (i, key) in new.iter().enumerate() {
            put(&*store, key, &data(i, 100 + i as u64)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            assert!(r.await.unwrap() > 0);
        }
        let kek_of = |stored: Bytes| {
            Header::parse(&stored[..HEADER_LEN])
                .unwrap()
                .kek_id
                .to_owned()
        };
        for (i, key) in old.iter().enumerate() {
            assert_eq!(get(&*store, key).await.unwrap(), data(C + 1 + i, i as u64));
            assert_eq!(kek_of(get(&*raw, key).await.unwrap()), "a");
        }
        for (i, key) in new.iter().enumerate() {
            assert_eq!(get(&*store, key).await.unwrap(), data(i, 100 + i as u64));
            assert_eq!(kek_of(get(&*raw, key).await.unwrap()), "b");
        }
        // A ring without a: its objects fail at once (cached DEKs included), b's still read.
        get_part(&*store, &old[0], GetRange::Bounded(0..1))
            .await
            .unwrap();
        store.set_keyring(ring(&["b"], "b"));
        for key in &old {
            let msg = decrypt_failure(get_part(&*store, key, GetRange::Bounded(0..1)).await, key);
            assert!(msg.contains("unknown KEK id \"a\""), "{msg}");
            decrypt_failure(get(&*store, key).await, key);
        }
        for (i, key) in new.iter().enumerate() {
            assert_eq!(get(&*store, key).await.unwrap(), data(i, 100 + i as u64));
        }
        put(&*store, "k/later", b"more").await;
        assert_eq!(get(&*store, "k/later").await.unwrap(), "more");
    }

    #[tokio::test]
    async fn copy_and_rename_re_encrypt_under_the_new_key() {
        let (raw, store) = bucket();
        let plain = data(C + 10, 8);
        put(&*store, "cp/a", &plain).await;
        store
            .copy(&Path::from("cp/a"), &Path::from("cp/b"))
            .await
            .unwrap();
        assert_eq!(get(&*store, "cp/b").await.unwrap(), plain);
        assert_ne!(
            get(&*raw, "cp/a").await.unwrap(),
            get(&*raw, "cp/b").await.unwrap()
        );
        store
            .rename(&Path::from("cp/b"), &Path::from("cp/c"))
            .await
            .unwrap();
        assert!(matches!(
            get(&*store, "cp/b").await,
            Err(Error::NotFound { .. })
        ));
        assert_eq!(get(&*store, "cp/c").await.unwrap(), plain);
        let onto = store
            .rename_if_not_exists(&Path::from("cp/c"), &Path::from("cp/a"))
            .await;
        assert!(matches!(onto, Err(Error::AlreadyExists { .. })), "{onto:?}");
        assert_eq!(
            get(&*store, "cp/c").await.unwrap(),
            plain,
            "a failed rename keeps the source"
        );
    }

    #[tokio::test]
    async fn multipart_uploads_are_not_supported() {
        let (_, store) = bucket();
        let r = store.put_multipart(&Path::from("mp/x")).await;
        let msg = r
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(matches!(r, Err(Error::NotSupported { .. })), "{msg}");
        assert!(msg.contains("multipart") && msg.contains("mp/x"), "{msg}");
    }

    #[tokio::test]
    async fn arbitrary_bucket_bytes_fail_cleanly_and_never_panic() {
        let (raw, store) = bucket();
        put(&*store, "g/real", &data(100, 1)).await;
        let real = get(&*raw, "g/real").await.unwrap();
        let mut rng = StdRng::seed_from_u64(0xbad);
        for i in 0..400 {
            let bytes = match i % 4 {
                // Random bytes of a random, usually impossible, size.
                0 => data(rng.random_range(0..700), i),
                // Random bytes of a possible size.
                1 => data(HEADER_LEN + TAG_LEN + rng.random_range(0..300), i),
                // A real object with one header byte changed.
                2 => {
                    let mut b = real.to_vec();
                    b[rng.random_range(0..HEADER_LEN)] ^= rng.random_range(1..=255u8);
                    b
                }
                // A real object with random length fields, and a body byte changed.
                _ => {
                    let mut b = real.to_vec();
                    b[5] = rng.random();
                    b[74..76].copy_from_slice(&rng.random::<u16>().to_be_bytes());
                    b[rng.random_range(HEADER_LEN..real.len())] ^= 0x80;
                    b
                }
            };
            put(&*raw, "g/x", &bytes).await;
            decrypt_failure(get(&*store, "g/x").await, "g/x");
            let _ = store.head(&Path::from("g/x")).await;
            for range in [
                GetRange::Bounded(0..1),
                GetRange::Offset(50),
                GetRange::Suffix(1),
            ] {
                let r = get_part(&*store, "g/x", range).await;
                assert!(
                    r.is_err() || r.as_ref().is_ok_and(|b| b.is_empty()),
                    "{r:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_warm_ranged_read_costs_one_get_and_the_dek_cache_stays_bounded() {
        let bucket = FaultyStore::in_memory(1);
        let store = EncryptedStore::new(bucket.clone(), CLUSTER, ring(&["a"], "a"), 2);
        for i in 0..5 {
            put(&*store, &format!("lru/{i}"), &data(C + 1, i)).await;
        }
        let gets = || bucket.calls(Op::GetRange) + bucket.calls(Op::Get);
        let before = gets();
        get_part(&*store, "lru/0", GetRange::Bounded(5..6))
            .await
            .unwrap();
        assert_eq!(gets() - before, 2, "cold: header, then the chunk");
        get_part(&*store, "lru/0", GetRange::Bounded(C as u64..C as u64 + 1))
            .await
            .unwrap();
        assert_eq!(gets() - before, 3, "warm: the chunk only");
        let cached = |store: &EncryptedStore| {
            let c = store.cache.lock();
            let mut keys: Vec<String> = c.entries.keys().cloned().collect();
            keys.sort();
            (keys, c.by_use.len())
        };
        for i in 1..5 {
            get_part(&*store, &format!("lru/{i}"), GetRange::Bounded(0..1))
                .await
                .unwrap();
        }
        assert_eq!(cached(&store), (vec!["lru/3".into(), "lru/4".into()], 2));
        get_part(&*store, "lru/3", GetRange::Bounded(0..1))
            .await
            .unwrap();
        get_part(&*store, "lru/0", GetRange::Bounded(0..1))
            .await
            .unwrap();
        assert_eq!(
            cached(&store),
            (vec!["lru/0".into(), "lru/3".into()], 2),
            "lru/4 was least recently used"
        );
        // Deleting and overwriting drop the entry.
        store.delete(&Path::from("lru/0")).await.unwrap();
        put(&*store, "lru/3", b"new").await;
        assert_eq!(cached(&store).0, Vec::<String>::new());
        assert_eq!(
            get_part(&*store, "lru/3", GetRange::Offset(1))
                .await
                .unwrap(),
            "ew"
        );
    }

    #[tokio::test]
    async fn a_cached_data_key_of_an_overwritten_object_is_replaced() {
        // Another writer (not through this store) replaces the object: the ETag tells.
        let raw = Arc::new(InMemory::new());
        let reader = encrypted(&raw, CLUSTER, 16);
        let writer = encrypted(&raw, CLUSTER, 16);
        put(&*writer, "o/x", &data(C + 1, 1)).await;
        get_part(&*reader, "o/x", GetRange::Bounded(0..1))
            .await
            .unwrap();
        put(&*writer, "o/x", &data(C + 1, 2)).await;
        let got = get_part(&*reader, "o/x", GetRange::Offset(C as u64 - 1))
            .await
            .unwrap();
        assert_eq!(got, data(C + 1, 2)[C - 1..]);
    }

    #[tokio::test]
    async fn the_keyring_wraps_and_unwraps_only_under_the_same_key_and_associated_data() {
        let ring = ring(&["a", "b"], "b");
        assert_eq!((ring.current_id(), ring.ids()), ("b", vec!["a", "b"]));
        let dek = [42u8; KEY_LEN];
        let wrapped = ring.wrap("a", &dek, b"context").await.unwrap();
        assert_eq!(wrapped.len(), KEYRING_WRAPPED_LEN);
        assert_eq!(ring.unwrap("a", &wrapped, b"context").await.unwrap(), dek);
        assert!(ring.unwrap("b", &wrapped, b"context").await.is_err());
        assert!(ring.unwrap("a", &wrapped, b"other").await.is_err());
        assert!(ring.unwrap("a", &wrapped[1..], b"context").await.is_err());
        let unknown = ring.unwrap("c", &wrapped, b"context").await.unwrap_err();
        assert!(
            matches!(unknown, KmsError::UnknownKey(ref id) if id == "c"),
            "{unknown}"
        );
        assert!(ring.wrap("c", &dek, b"").await.is_err());
        assert_ne!(
            ring.wrap("a", &dek, b"").await.unwrap(),
            ring.wrap("a", &dek, b"").await.unwrap()
        );
    }

    #[tokio::test]
    async fn debug_output_never_shows_key_material() {
        let ring = Keyring::new("a", [("a".to_string(), [0xab; KEY_LEN])]).unwrap();
        let shown = format!("{ring:?}");
        assert_eq!(shown, r#"Keyring { current: "a", ids: ["a"] }"#);
        let store = EncryptedStore::new(Arc::new(InMemory::new()), CLUSTER, ring, 4);
        put(&*store, "dbg/x", b"y").await;
        get_part(&*store, "dbg/x", GetRange::Bounded(0..1))
            .await
            .unwrap();
        let shown = format!("{store:?} {store}");
        for needle in ["ab, ab", "0xab", "abab", "171"] {
            assert!(!shown.contains(needle), "{shown}");
        }
        assert!(shown.contains("cached_deks: 1"), "{shown}");
    }

    fn settings<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn keyring_settings_load_keys_from_files_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let raw: [u8; KEY_LEN] = std::array::from_fn(|i| i as u8 + 1);
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let b64 = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(raw)
        };
        let file = |name: &str, content: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            p.display().to_string()
        };
        let (f_raw, f_hex, f_b64) = (
            file("raw", &raw),
            file("hex", format!("{hex}\n").as_bytes()),
            file("b64", format!("{b64}\r\n").as_bytes()),
        );
        assert!(Keyring::from_settings(settings(&[])).unwrap().is_none());
        assert!(
            Keyring::from_settings(settings(&[(KEYS_SETTING, " ")]))
                .unwrap()
                .is_none()
        );
        // One key: it is current without naming it.
        let keys = format!("only=file:{f_raw}");
        let ring = Keyring::from_settings(settings(&[(KEYS_SETTING, &keys)]))
            .unwrap()
            .unwrap();
        assert_eq!((ring.current_id(), ring.ids()), ("only", vec!["only"]));
        let keys = format!(
            "r=file:{f_raw}, h=file:{f_hex} ,b=file:{f_b64},eh=env:KEK_HEX,eb=env:KEK_B64,"
        );
        let env = |name: &str| match name {
            "KEK_HEX" => Some(hex.to_uppercase()),
            "KEK_B64" => Some(b64.clone()),
            _ => None,
        };
        let s = [(KEYS_SETTING, keys.as_str()), (CURRENT_KEY_SETTING, "h")];
        let ring = Keyring::from_settings_with_env(settings(&s), env)
            .unwrap()
            .unwrap();
        assert_eq!(
            (ring.current_id(), ring.ids()),
            ("h", vec!["b", "eb", "eh", "h", "r"])
        );
        // All five are the same key: what one wraps, every other unwraps.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let wrapped = ring.wrap("r", &[9; KEY_LEN], b"").await.unwrap();
            for id in ["b", "eb", "eh", "h"] {
                assert_eq!(ring.unwrap(id, &wrapped, b"").await.unwrap(), [9; KEY_LEN]);
            }
        });
    }

    #[test]
    fn keyring_settings_errors_name_the_setting_and_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, content: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            p.display().to_string()
        };
        let secret = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";
        let bad_hex = file("bad-hex", secret.replace('5', "g").as_bytes());
        let short = file("short", &secret.as_bytes()[..62]);
        let text = file("text", &secret.as_bytes()[..32]);
        let zero = file("zero", &[0; KEY_LEN]);
        let good = file("good", secret.as_bytes());
        let (keys, current) = (KEYS_SETTING, CURRENT_KEY_SETTING);
        // (object.encryption.keys, object.encryption.key.id, setting named, problem named);
        // an empty value is an unset setting.
        let cases = [
            (String::new(), "a", current, "is not"),
            (format!("a=file:{bad_hex}"), "", keys, "not hex"),
            (
                format!("a=file:{short}"),
                "",
                keys,
                "neither hex nor base64",
            ),
            (format!("a=file:{text}"), "", keys, "32 characters of text"),
            (format!("a=file:{zero}"), "", keys, "all zero"),
            (
                "a=file:/nonexistent/kek".into(),
                "",
                keys,
                "cannot read /nonexistent/kek",
            ),
            (
                "a=env:NO_SUCH_VAR".into(),
                "",
                keys,
                "NO_SUCH_VAR is not set",
            ),
            (format!("a={secret}"), "", keys, "SOURCE must be"),
            (secret.into(), "", keys, "entry 1 is not ID=SOURCE"),
            (format!("a b=file:{good}"), "", keys, "KEK ids are"),
            (
                format!("a=file:{good},a=file:{good}"),
                "",
                keys,
                "duplicate KEK id \"a\"",
            ),
            (",".into(), "", keys, "lists no keys"),
            (
                format!("a=file:{good},b=file:{good}"),
                "",
                current,
                "must name the current key",
            ),
            (format!("a=file:{good}"), "c", current, "\"c\" is not a key"),
        ];
        for (keys_value, current_value, setting, problem) in cases {
            let pairs = [(keys, keys_value.as_str()), (current, current_value)];
            let get = |k: &str| settings(&pairs)(k).filter(|v| !v.is_empty());
            let e = Keyring::from_settings_with_env(get, no_env).unwrap_err();
            assert!(e.contains(setting) && e.contains(problem), "{pairs:?}: {e}");
            assert!(!e.contains(&secret[..16]), "key material in {e}");
        }
    }

    #[tokio::test]
    async fn it_stacks_under_the_metered_store_as_a_dyn_object_store() {
        let raw = Arc::new(InMemory::new());
        let store: Arc<dyn ObjectStore> = MeteredStore::new(encrypted(&raw, CLUSTER, 16));
        put(&*store, "stack/x", &data(C + 2, 4)).await;
        assert_eq!(get(&*store, "stack/x").await.unwrap(), data(C + 2, 4));
        assert_eq!(
            store.head(&Path::from("stack/x")).await.unwrap().size,
            C as u64 + 2
        );
        let part = get_part(&*store, "stack/x", GetRange::Suffix(3))
            .await
            .unwrap();
        assert_eq!(part, data(C + 2, 4)[C - 1..]);
        assert!(store.to_string().contains("Encrypted("));
    }

    #[tokio::test]
    async fn a_stream_store_runs_unchanged_on_an_encrypted_bucket() {
        use crate::memory::MemoryCatalog;
        use crate::{StreamConfig, StreamStore};
        use std::time::Duration;
        let raw = Arc::new(InMemory::new());
        let bucket: Arc<dyn ObjectStore> = MeteredStore::new(encrypted(&raw, b"cluster-x", 64));
        let catalog = Arc::new(MemoryCatalog::new());
        let config = StreamConfig {
            cluster_id: "cluster-x".into(),
            wal_batch_interval: Duration::from_millis(5),
            compaction_interval: Duration::ZERO,
            gc_interval: Duration::ZERO,
            object_delete_grace: Duration::ZERO,
            ..StreamConfig::default()
        };
        let payload = |offset: u64| Bytes::from(format!("SECRET-PAYLOAD-{offset}-").repeat(200));
        let writer = StreamStore::start(bucket.clone(), catalog.clone(), config.clone());
        let s = writer.open(1).await.unwrap();
        for _ in 0..4 {
            // Several WAL objects, then merged by compaction.
            let handles: Vec<_> = (0..25).map(|_| s.append(1, 0, payload).unwrap()).collect();
            for h in handles {
                h.durable.await.unwrap().unwrap();
            }
        }
        assert!(writer.compact_now().await.unwrap() > 0);
        writer.shutdown().await;
        // Another node reads everything back through the bucket (no shared caches).
        let reader = StreamStore::start(
            bucket,
            catalog,
            StreamConfig {
                node_id: 2,
                ..config
            },
        );
        let s = reader.open(1).await.unwrap();
        let mut next = 0;
        while next < 100 {
            for r in s.read(next, 64 * 1024).await.unwrap() {
                assert_eq!((r.base_offset, &r.payload), (next, &payload(next)));
                next = r.end_offset();
            }
        }
        reader.shutdown().await;
        let stored: Vec<ObjectMeta> = raw.list(None).try_collect().await.unwrap();
        assert!(!stored.is_empty());
        for m in stored {
            let bytes = raw.get(&m.location).await.unwrap().bytes().await.unwrap();
            assert!(
                !bytes.windows(7).any(|w| w == b"SECRET-"),
                "plaintext in {}",
                m.location
            );
        }
    }
}
