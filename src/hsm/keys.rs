//! Key pairs and wrapping keys in the token: generation, lookup by `pkcs11:` URI, public keys
//! as SubjectPublicKeyInfo DER, signing, and AES-256-GCM wrapping of secret bytes.

use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use sha2::Digest;
use zeroize::Zeroizing;

use super::error::{HsmError, ck_code, rv_of};
use super::pool::{Hsm, OpFailure};
use super::uri::Pkcs11Uri;

/// DER of the namedCurve OIDs in CKA_EC_PARAMS.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const GCM_IV_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;
const KEY_ID_LEN: usize = 16;

/// The kinds of key pair Tessera makes in the HSM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySpec {
    EcP256,
    EcP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeySpec {
    pub fn is_ec(self) -> bool {
        matches!(self, KeySpec::EcP256 | KeySpec::EcP384)
    }

    /// The name used in configs and on the command line (`p256`, …).
    pub fn name(self) -> &'static str {
        match self {
            KeySpec::EcP256 => "p256",
            KeySpec::EcP384 => "p384",
            KeySpec::Rsa2048 => "rsa2048",
            KeySpec::Rsa3072 => "rsa3072",
            KeySpec::Rsa4096 => "rsa4096",
        }
    }

    fn rsa_bits(self) -> Option<u64> {
        match self {
            KeySpec::Rsa2048 => Some(2048),
            KeySpec::Rsa3072 => Some(3072),
            KeySpec::Rsa4096 => Some(4096),
            _ => None,
        }
    }
}

impl FromStr for KeySpec {
    type Err = HsmError;
    fn from_str(s: &str) -> Result<KeySpec, HsmError> {
        Ok(match s {
            "p256" => KeySpec::EcP256,
            "p384" => KeySpec::EcP384,
            "rsa2048" => KeySpec::Rsa2048,
            "rsa3072" => KeySpec::Rsa3072,
            "rsa4096" => KeySpec::Rsa4096,
            other => {
                return Err(HsmError::KeySpecUnknown {
                    given: other.to_string(),
                });
            }
        })
    }
}

impl std::fmt::Display for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How `HsmKey::sign_with` hashes and signs (always inside the HSM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureScheme {
    /// CKM_ECDSA_SHA256; the signature is returned as a DER ECDSA-Sig-Value.
    EcdsaSha256,
    /// CKM_ECDSA_SHA384; DER ECDSA-Sig-Value.
    EcdsaSha384,
    /// CKM_SHA256_RSA_PKCS (RSASSA-PKCS1-v1_5 with SHA-256).
    RsaPkcs1Sha256,
    /// CKM_SHA256_RSA_PKCS_PSS with MGF1-SHA-256 and a 32-byte salt.
    RsaPssSha256,
}

impl SignatureScheme {
    fn fits(self, spec: KeySpec) -> bool {
        match self {
            SignatureScheme::EcdsaSha256 | SignatureScheme::EcdsaSha384 => spec.is_ec(),
            SignatureScheme::RsaPkcs1Sha256 | SignatureScheme::RsaPssSha256 => !spec.is_ec(),
        }
    }
}

/// A private key in the HSM plus its public half. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct HsmKey {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    hsm: Hsm,
    label: String,
    id: Vec<u8>,
    spec: KeySpec,
    public_der: Vec<u8>,
    /// The private key's object handle and the pool epoch it was found in.
    handle: Mutex<Option<(u64, ObjectHandle)>>,
}

impl std::fmt::Debug for HsmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmKey")
            .field("uri", &self.uri())
            .field("spec", &self.inner.spec)
            .finish()
    }
}

impl HsmKey {
    /// `pkcs11:token=…;object=…;id=…;type=private`
    pub fn uri(&self) -> String {
        Pkcs11Uri {
            token: Some(self.inner.hsm.token_label().to_string()),
            object: Some(self.inner.label.clone()),
            id: Some(self.inner.id.clone()),
            object_type: Some("private".into()),
        }
        .to_uri_string()
    }

    pub fn spec(&self) -> KeySpec {
        self.inner.spec
    }

    /// The key's label (CKA_LABEL).
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// SubjectPublicKeyInfo DER.
    pub fn public_key_der(&self) -> &[u8] {
        &self.inner.public_der
    }

    /// Hashes and signs `message` inside the HSM with `scheme`. ECDSA signatures come back
    /// DER-encoded. Everything outside `hsm` signs through [`super::Signer`], which picks the
    /// scheme from the key's kind; this is the lower-level call (tests use it for PSS).
    pub fn sign_with(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let spec = self.inner.spec;
        if !scheme.fits(spec) {
            return Err(HsmError::SchemeMismatch { scheme, spec });
        }
        // ECDSA: hash-and-sign in the token when it offers CKM_ECDSA_SHA256/384, otherwise
        // hash here and sign the digest with CKM_ECDSA (SoftHSM2 2.6). Same signature either way.
        let offered = |m: MechanismType| self.inner.hsm.inner.mechanisms.contains(&m);
        let digest: Vec<u8>;
        let (mechanism, input): (Mechanism<'_>, &[u8]) = match scheme {
            SignatureScheme::EcdsaSha256 if offered(MechanismType::ECDSA_SHA256) => {
                (Mechanism::EcdsaSha256, message)
            }
            SignatureScheme::EcdsaSha384 if offered(MechanismType::ECDSA_SHA384) => {
                (Mechanism::EcdsaSha384, message)
            }
            SignatureScheme::EcdsaSha256 => {
                digest = sha2::Sha256::digest(message).to_vec();
                (Mechanism::Ecdsa, &digest)
            }
            SignatureScheme::EcdsaSha384 => {
                digest = sha2::Sha384::digest(message).to_vec();
                (Mechanism::Ecdsa, &digest)
            }
            SignatureScheme::RsaPkcs1Sha256 => (Mechanism::Sha256RsaPkcs, message),
            SignatureScheme::RsaPssSha256 => (
                Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
                    hash_alg: MechanismType::SHA256,
                    mgf: PkcsMgfType::MGF1_SHA256,
                    s_len: 32.into(),
                }),
                message,
            ),
        };
        let raw = self.inner.hsm.run("C_Sign", |session| {
            let handle = self.private_handle(session)?;
            Ok(session.sign(&mechanism, handle, input)?)
        })?;
        match spec {
            KeySpec::EcP256 => ecdsa_p256_der(&raw),
            KeySpec::EcP384 => ecdsa_p384_der(&raw),
            _ => Ok(raw),
        }
    }

    /// The private key's handle, found again when the pool has been rebuilt since it was cached.
    fn private_handle(&self, session: &Session) -> Result<ObjectHandle, OpFailure> {
        let epoch = self.inner.hsm.inner.epoch.load(Ordering::SeqCst);
        let mut cached = self.inner.handle.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((e, h)) = *cached
            && e == epoch
        {
            return Ok(h);
        }
        let found = session.find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(self.inner.id.clone()),
            Attribute::Label(self.inner.label.as_bytes().to_vec()),
        ])?;
        match found.as_slice() {
            [h] => {
                *cached = Some((epoch, *h));
                Ok(*h)
            }
            [] => Err(HsmError::KeyNotFound { uri: self.uri() }.into()),
            several => Err(HsmError::KeyAmbiguous {
                uri: self.uri(),
                count: several.len(),
            }
            .into()),
        }
    }
}

fn ecdsa_malformed(raw: &[u8], e: impl std::fmt::Display) -> HsmError {
    HsmError::Malformed {
        what: "ECDSA signature",
        reason: format!("{} bytes of r||s: {e}", raw.len()),
    }
}

fn ecdsa_p256_der(raw: &[u8]) -> Result<Vec<u8>, HsmError> {
    let sig = p256::ecdsa::Signature::from_slice(raw).map_err(|e| ecdsa_malformed(raw, e))?;
    Ok(sig.to_der().as_bytes().to_vec())
}

fn ecdsa_p384_der(raw: &[u8]) -> Result<Vec<u8>, HsmError> {
    let sig = p384::ecdsa::Signature::from_slice(raw).map_err(|e| ecdsa_malformed(raw, e))?;
    Ok(sig.to_der().as_bytes().to_vec())
}

impl Hsm {
    /// Generates a key pair in the token: the private key is CKA_TOKEN, CKA_PRIVATE,
    /// CKA_SENSITIVE, not CKA_EXTRACTABLE and may only sign; both halves carry `label` and a
    /// random 16-byte CKA_ID. Refuses when any object with `label` already exists.
    pub fn generate_key_pair(&self, label: &str, spec: KeySpec) -> Result<HsmKey, HsmError> {
        self.refuse_existing_label(label)?;
        let (id, public_der) = self.run("C_GenerateKeyPair", |session| {
            let id = session.generate_random_vec(KEY_ID_LEN as u32)?;
            let mut public = vec![
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id.clone()),
            ];
            let mechanism = match spec {
                KeySpec::EcP256 | KeySpec::EcP384 => {
                    let params = if spec == KeySpec::EcP256 {
                        P256_PARAMS
                    } else {
                        P384_PARAMS
                    };
                    public.push(Attribute::EcParams(params.to_vec()));
                    Mechanism::EccKeyPairGen
                }
                _ => {
                    public.push(Attribute::ModulusBits(
                        spec.rsa_bits().unwrap_or(2048).into(),
                    ));
                    public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
                    Mechanism::RsaPkcsKeyPairGen
                }
            };
            let private = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id.clone()),
            ];
            let (public_handle, _private_handle) =
                session.generate_key_pair(&mechanism, &public, &private)?;
            let der = public_key_der(session, public_handle, spec, label)?;
            Ok((id, der))
        })?;
        Ok(self.key(label.to_string(), id, spec, public_der))
    }

    /// Finds the one private key a `pkcs11:` URI names (object= and/or id=; type, if given,
    /// must be `private`), with its public half.
    pub fn find_key(&self, uri: &str) -> Result<HsmKey, HsmError> {
        let parsed = Pkcs11Uri::parse(uri)?;
        if let Some(t) = &parsed.token
            && t != self.token_label()
        {
            return Err(HsmError::UriWrongToken {
                uri: uri.to_string(),
                uri_token: t.clone(),
                token: self.token_label().to_string(),
            });
        }
        if let Some(t) = &parsed.object_type
            && t != "private"
        {
            return Err(HsmError::UriInvalid {
                uri: uri.to_string(),
                reason: format!("type={t} does not name a private key"),
            });
        }
        let (label, id, spec, public_der) = self.run("C_FindObjects", |session| {
            let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
            if let Some(o) = &parsed.object {
                template.push(Attribute::Label(o.as_bytes().to_vec()));
            }
            if let Some(id) = &parsed.id {
                template.push(Attribute::Id(id.clone()));
            }
            let found = session.find_objects(&template)?;
            let private = match found.as_slice() {
                [h] => *h,
                [] => {
                    return Err(HsmError::KeyNotFound {
                        uri: uri.to_string(),
                    }
                    .into());
                }
                several => {
                    return Err(HsmError::KeyAmbiguous {
                        uri: uri.to_string(),
                        count: several.len(),
                    }
                    .into());
                }
            };
            let attrs = session.get_attributes(
                private,
                &[
                    AttributeType::Label,
                    AttributeType::Id,
                    AttributeType::KeyType,
                ],
            )?;
            let (mut label, mut id, mut key_type) = (String::new(), Vec::new(), None);
            for a in attrs {
                match a {
                    Attribute::Label(l) => label = String::from_utf8_lossy(&l).into_owned(),
                    Attribute::Id(i) => id = i,
                    Attribute::KeyType(k) => key_type = Some(k),
                    _ => {}
                }
            }
            let spec = if key_type == Some(KeyType::EC) {
                let params =
                    single_bytes(session.get_attributes(private, &[AttributeType::EcParams])?);
                match params.as_deref() {
                    Some(P256_PARAMS) => KeySpec::EcP256,
                    Some(P384_PARAMS) => KeySpec::EcP384,
                    _ => {
                        return Err(HsmError::UnsupportedKey {
                            uri: uri.to_string(),
                            reason: "an EC curve other than P-256/P-384".into(),
                        }
                        .into());
                    }
                }
            } else if key_type == Some(KeyType::RSA) {
                let modulus =
                    single_bytes(session.get_attributes(private, &[AttributeType::Modulus])?)
                        .unwrap_or_default();
                let bits = modulus.iter().skip_while(|b| **b == 0).count() * 8;
                match bits {
                    2048 => KeySpec::Rsa2048,
                    3072 => KeySpec::Rsa3072,
                    4096 => KeySpec::Rsa4096,
                    n => {
                        return Err(HsmError::UnsupportedKey {
                            uri: uri.to_string(),
                            reason: format!("RSA with a {n}-bit modulus"),
                        }
                        .into());
                    }
                }
            } else {
                return Err(HsmError::UnsupportedKey {
                    uri: uri.to_string(),
                    reason: format!("key type {key_type:?}"),
                }
                .into());
            };
            let public = session.find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Id(id.clone()),
            ])?;
            // Several public keys with this CKA_ID (e.g. an empty one): prefer the same label.
            let public = if public.len() > 1 {
                session.find_objects(&[
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::Id(id.clone()),
                    Attribute::Label(label.as_bytes().to_vec()),
                ])?
            } else {
                public
            };
            let Some(&public) = public.first() else {
                return Err(HsmError::PublicKeyMissing {
                    uri: uri.to_string(),
                }
                .into());
            };
            let der = public_key_der(session, public, spec, uri)?;
            Ok((label, id, spec, der))
        })?;
        Ok(self.key(label, id, spec, public_der))
    }

    /// Destroys both halves of a key pair (every object with its CKA_ID and label).
    pub fn destroy_key_pair(&self, key: &HsmKey) -> Result<(), HsmError> {
        self.run("C_DestroyObject", |session| {
            let objects = session.find_objects(&[
                Attribute::Id(key.inner.id.clone()),
                Attribute::Label(key.inner.label.as_bytes().to_vec()),
            ])?;
            for o in objects {
                session.destroy_object(o)?;
            }
            Ok(())
        })
    }

    /// Generates an AES-256 secret key (CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, not extractable,
    /// encrypt/decrypt only) used by `wrap_secret`/`unwrap_secret`.
    pub fn generate_wrapping_key(&self, label: &str) -> Result<(), HsmError> {
        self.refuse_existing_label(label)?;
        self.run("C_GenerateKey", |session| {
            let id = session.generate_random_vec(KEY_ID_LEN as u32)?;
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id),
            ];
            session.generate_key(&Mechanism::AesKeyGen, &template)?;
            Ok(())
        })
    }

    /// Encrypts `secret` with CKM_AES_GCM under the named AES key. The blob is
    /// IV (12 random bytes from the HSM) ‖ ciphertext ‖ 16-byte tag. `aad` is the associated
    /// data: the caller's description of what the secret is and where it belongs (not stored in
    /// the blob); `unwrap_secret` must be given the same bytes.
    pub fn wrap_secret(
        &self,
        wrapping_key_label: &str,
        secret: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        self.run("C_Encrypt", |session| {
            let key = self.wrapping_key(session, wrapping_key_label)?;
            let mut iv = [0u8; GCM_IV_LEN];
            session.generate_random_slice(&mut iv)?;
            let mut iv_param = iv;
            let params = GcmParams::new(&mut iv_param, aad, ((GCM_TAG_LEN * 8) as u64).into())?;
            let ciphertext = session.encrypt(&Mechanism::AesGcm(params), key, secret)?;
            let mut out = Vec::with_capacity(GCM_IV_LEN + ciphertext.len());
            out.extend_from_slice(&iv);
            out.extend_from_slice(&ciphertext);
            Ok(out)
        })
    }

    /// Reverses `wrap_secret`; a damaged or tampered blob, or associated data other than the
    /// blob was wrapped with, is refused ([`HsmError::WrappedSecretRejected`]).
    pub fn unwrap_secret(
        &self,
        wrapping_key_label: &str,
        wrapped: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        if wrapped.len() < GCM_IV_LEN + GCM_TAG_LEN {
            return Err(HsmError::WrappedSecretRejected {
                label: wrapping_key_label.to_string(),
                reason: format!("{} bytes is too short for IV and tag", wrapped.len()),
            });
        }
        let (iv, ciphertext) = wrapped.split_at(GCM_IV_LEN);
        self.run("C_Decrypt", |session| {
            let key = self.wrapping_key(session, wrapping_key_label)?;
            let mut iv_param = [0u8; GCM_IV_LEN];
            iv_param.copy_from_slice(iv);
            let params = GcmParams::new(&mut iv_param, aad, ((GCM_TAG_LEN * 8) as u64).into())?;
            match session.decrypt(&Mechanism::AesGcm(params), key, ciphertext) {
                Ok(plain) => Ok(Zeroizing::new(plain)),
                // A wrong tag is CKR_ENCRYPTED_DATA_INVALID in the standard; SoftHSM2 2.6
                // reports CKR_GENERAL_ERROR (or CKR_FUNCTION_FAILED) for it.
                Err(e)
                    if matches!(
                        rv_of(&e),
                        Some(
                            RvError::EncryptedDataInvalid
                                | RvError::EncryptedDataLenRange
                                | RvError::DataInvalid
                                | RvError::DataLenRange
                                | RvError::GeneralError
                                | RvError::FunctionFailed
                        )
                    ) =>
                {
                    Err(HsmError::WrappedSecretRejected {
                        label: wrapping_key_label.to_string(),
                        reason: format!(
                            "C_Decrypt returned {}: the authentication tag does not match",
                            ck_code(&e)
                        ),
                    }
                    .into())
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn wrapping_key(&self, session: &Session, label: &str) -> Result<ObjectHandle, OpFailure> {
        let found = session.find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(label.as_bytes().to_vec()),
        ])?;
        match found.as_slice() {
            [h] => Ok(*h),
            [] => Err(HsmError::WrappingKeyNotFound {
                label: label.to_string(),
                token: self.token_label().to_string(),
            }
            .into()),
            several => Err(HsmError::WrappingKeyAmbiguous {
                label: label.to_string(),
                count: several.len(),
                token: self.token_label().to_string(),
            }
            .into()),
        }
    }

    fn refuse_existing_label(&self, label: &str) -> Result<(), HsmError> {
        let existing = self.run("C_FindObjects", |session| {
            Ok(session.find_objects(&[Attribute::Label(label.as_bytes().to_vec())])?)
        })?;
        if existing.is_empty() {
            Ok(())
        } else {
            Err(HsmError::LabelExists {
                label: label.to_string(),
                token: self.token_label().to_string(),
            })
        }
    }

    fn key(&self, label: String, id: Vec<u8>, spec: KeySpec, public_der: Vec<u8>) -> HsmKey {
        HsmKey {
            inner: Arc::new(KeyInner {
                hsm: self.clone(),
                label,
                id,
                spec,
                public_der,
                handle: Mutex::new(None),
            }),
        }
    }
}

fn single_bytes(attrs: Vec<Attribute>) -> Option<Vec<u8>> {
    attrs.into_iter().find_map(|a| match a {
        Attribute::EcParams(v)
        | Attribute::EcPoint(v)
        | Attribute::Modulus(v)
        | Attribute::PublicExponent(v) => Some(v),
        _ => None,
    })
}

/// Reads a public key object and encodes it as SubjectPublicKeyInfo DER.
fn public_key_der(
    session: &Session,
    public: ObjectHandle,
    spec: KeySpec,
    name: &str,
) -> Result<Vec<u8>, OpFailure> {
    use spki::EncodePublicKey;
    let malformed = |reason: String| {
        OpFailure::Hsm(HsmError::Malformed {
            what: "public key",
            reason: format!("{name}: {reason}"),
        })
    };
    if spec.is_ec() {
        let point = single_bytes(session.get_attributes(public, &[AttributeType::EcPoint])?)
            .ok_or_else(|| malformed("no CKA_EC_POINT".into()))?;
        let point = ec_point_octets(&point);
        let der = match spec {
            KeySpec::EcP256 => p256::PublicKey::from_sec1_bytes(point)
                .map_err(|e| malformed(e.to_string()))?
                .to_public_key_der(),
            _ => p384::PublicKey::from_sec1_bytes(point)
                .map_err(|e| malformed(e.to_string()))?
                .to_public_key_der(),
        };
        Ok(der
            .map_err(|e| malformed(e.to_string()))?
            .as_bytes()
            .to_vec())
    } else {
        let attrs = session.get_attributes(
            public,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        )?;
        let (mut n, mut e) = (None, None);
        for a in attrs {
            match a {
                Attribute::Modulus(v) => n = Some(v),
                Attribute::PublicExponent(v) => e = Some(v),
                _ => {}
            }
        }
        let (n, e) = n
            .zip(e)
            .ok_or_else(|| malformed("no modulus/exponent".into()))?;
        let key = rsa::RsaPublicKey::new(
            rsa::BoxedUint::from_be_slice_vartime(&n),
            rsa::BoxedUint::from_be_slice_vartime(&e),
        )
        .map_err(|err| malformed(err.to_string()))?;
        Ok(key
            .to_public_key_der()
            .map_err(|err| malformed(err.to_string()))?
            .as_bytes()
            .to_vec())
    }
}

/// CKA_EC_POINT is a DER OCTET STRING around the SEC1 point for most modules; some return the
/// bare point. Accepts both.
fn ec_point_octets(v: &[u8]) -> &[u8] {
    if v.len() >= 2 && v[0] == 0x04 {
        if v[1] < 0x80 && v.len() == 2 + v[1] as usize {
            return &v[2..];
        }
        if v[1] == 0x81 && v.len() >= 3 && v.len() == 3 + v[2] as usize {
            return &v[3..];
        }
    }
    v
}
