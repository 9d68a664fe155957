//! A TLS client identity whose private key never leaves the card: a rustls [`SigningKey`] and
//! [`ResolvesClientCert`] over one PIV slot. rustls hands the handshake transcript to
//! [`Signer::sign`]; it is hashed here in software (SHA-256 for P-256, SHA-384 for P-384, as
//! TLS 1.3 binds the hash to the curve) and the digest is signed by the slot's key on the card,
//! after the PIN was verified. When the slot's touch policy needs a touch, the caller's
//! `touch_prompt` is called first ("touch your YubiKey"). The certificate presented is the one
//! stored in the slot, read from the card and checked to hold the slot's public key.
//!
//! ECDSA P-256 and P-384 only: TLS 1.3 signs with RSA only as RSA-PSS, which the card does not
//! do (it would need the PSS encoding in software around a raw RSA operation), so an RSA slot is
//! refused with [`PivError::UnsupportedTlsKey`].
use super::{PivError, PivToken, Secret};
use rustls::client::ResolvesClientCert;
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use sha2::Digest as _;
use std::fmt;
use std::sync::{Arc, Mutex};
use yubikey::piv::{AlgorithmId, SlotId};
use yubikey::{PinPolicy, TouchPolicy};

/// Called before each signature that needs a touch, with the slot's name ("9a").
pub type TouchPrompt = Arc<dyn Fn(&str) + Send + Sync>;

/// The slot's key on an open token, its certificate, and the PIN that unlocks it.
pub struct CardTlsKey {
    token: Mutex<PivToken>,
    slot: SlotId,
    slot_name: String,
    algorithm: AlgorithmId,
    pin_policy: PinPolicy,
    touch_policy: TouchPolicy,
    pin: Secret,
    touch_prompt: TouchPrompt,
    certificate: CertificateDer<'static>,
    spki: Vec<u8>,
    /// What went wrong in the last signature (rustls keeps only a string of it).
    last_error: Mutex<Option<String>>,
}

impl fmt::Debug for CardTlsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CardTlsKey")
            .field("slot", &self.slot_name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The slot's name as the wire and the operator write it ("9a").
pub fn slot_name(slot: SlotId) -> String {
    format!("{:02x}", u8::from(slot))
}

impl CardTlsKey {
    /// Reads the slot's key (GET METADATA: algorithm, PIN and touch policy, public key) and its
    /// certificate from `token`, checks that the certificate holds that key, and verifies the
    /// PIN once (a wrong PIN is reported here, with the tries left, not in the middle of a TLS
    /// handshake).
    pub fn open(
        mut token: PivToken,
        slot: SlotId,
        pin: Secret,
        touch_prompt: TouchPrompt,
    ) -> Result<CardTlsKey, PivError> {
        let key = token.slot_key(slot)?;
        let slot_name = slot_name(slot);
        if !matches!(key.algorithm, AlgorithmId::EccP256 | AlgorithmId::EccP384) {
            return Err(PivError::UnsupportedTlsKey {
                slot: slot_name,
                algorithm: format!("{:?}", key.algorithm),
            });
        }
        let certificate = token
            .read_certificate(slot)?
            .ok_or_else(|| PivError::NoCertificate(slot_name.clone()))?;
        let spki = certificate_spki(&certificate)?;
        if let Some(public) = &key.public_key_der
            && *public != spki
        {
            return Err(PivError::CertificateKeyMismatch(slot_name));
        }
        token.verify_pin(&pin)?;
        Ok(CardTlsKey {
            token: Mutex::new(token),
            slot,
            slot_name,
            algorithm: key.algorithm,
            pin_policy: key.pin_policy,
            touch_policy: key.touch_policy,
            pin,
            touch_prompt,
            certificate: CertificateDer::from(certificate),
            spki,
            last_error: Mutex::new(None),
        })
    }

    /// The slot's certificate (DER) as read from the card.
    pub fn certificate_der(&self) -> &[u8] {
        self.certificate.as_ref()
    }

    /// The slot's name ("9a").
    pub fn slot(&self) -> &str {
        &self.slot_name
    }

    /// The card error of the last failed signature, if any (rustls reports only its text).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Runs `step` on the open token (the one connection to the card this key holds), e.g. the
    /// renewal's key generation while the TLS connection this key authenticated stays open.
    pub fn with_token<R>(&self, step: impl FnOnce(&mut PivToken) -> R) -> R {
        let mut token = self
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        step(&mut token)
    }

    /// Gives the token back (after the connection that used this key is closed).
    pub fn into_token(self) -> PivToken {
        self.token
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A rustls client certificate resolver presenting this slot's certificate, followed by
    /// `intermediates` (DER), with this key.
    pub fn into_resolver(
        self: Arc<Self>,
        intermediates: Vec<CertificateDer<'static>>,
    ) -> Arc<dyn ResolvesClientCert> {
        let mut chain = vec![self.certificate.clone()];
        chain.extend(intermediates);
        Arc::new(CardClientCert(Arc::new(CertifiedKey::new(
            chain,
            Arc::new(CardSigningKey(self)),
        ))))
    }

    fn scheme(&self) -> SignatureScheme {
        match self.algorithm {
            AlgorithmId::EccP384 => SignatureScheme::ECDSA_NISTP384_SHA384,
            _ => SignatureScheme::ECDSA_NISTP256_SHA256,
        }
    }

    /// Hashes `message` and has the card sign the digest (DER ECDSA signature, as TLS wants).
    fn sign_on_card(&self, message: &[u8]) -> Result<Vec<u8>, PivError> {
        let digest = match self.algorithm {
            AlgorithmId::EccP384 => sha2::Sha384::digest(message).to_vec(),
            _ => sha2::Sha256::digest(message).to_vec(),
        };
        let mut token = self
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // ONCE keys need the PIN verified in this session, ALWAYS keys before each signature;
        // verifying again costs no try when the PIN is right.
        if self.pin_policy != PinPolicy::Never {
            token.verify_pin(&self.pin)?;
        }
        match self.touch_policy {
            TouchPolicy::Always | TouchPolicy::Cached => {
                (self.touch_prompt)(&self.slot_name);
                token.sign_with_touch(self.slot, self.algorithm, &digest)
            }
            _ => token.sign(self.slot, self.algorithm, &digest),
        }
    }
}

/// The SubjectPublicKeyInfo (DER) of a certificate.
fn certificate_spki(der: &[u8]) -> Result<Vec<u8>, PivError> {
    use der::{Decode as _, Encode as _};
    let certificate = x509_cert::Certificate::from_der(der).map_err(|e| PivError::Malformed {
        what: "slot certificate",
        detail: e.to_string(),
    })?;
    certificate
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| PivError::Malformed {
            what: "slot certificate",
            detail: e.to_string(),
        })
}

#[derive(Debug)]
struct CardSigningKey(Arc<CardTlsKey>);

impl SigningKey for CardSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = self.0.scheme();
        offered
            .contains(&scheme)
            .then(|| Box::new(CardSigner(self.0.clone())) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.0.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct CardSigner(Arc<CardTlsKey>);

impl Signer for CardSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.0.sign_on_card(message).map_err(|e| {
            let text = e.to_string();
            if let Ok(mut last) = self.0.last_error.lock() {
                *last = Some(text.clone());
            }
            rustls::Error::General(format!("the token could not sign: {text}"))
        })
    }

    fn scheme(&self) -> SignatureScheme {
        self.0.scheme()
    }
}

#[derive(Debug)]
struct CardClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for CardClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // Without a scheme the card can sign, no certificate: the server then refuses the
        // handshake, which says more than a signature it cannot check.
        self.0
            .key
            .choose_scheme(sigschemes)
            .map(|_| Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}
