//! How the CA signs what rcgen encodes, in two steps (Boulder's `Prepare`, then `Issue`), so the
//! caller can record the to-be-signed bytes between them.
//!
//! rcgen encodes a certificate or CRL around an [`EncodeOnlyKey`]: the signer's public key and
//! algorithm, and an empty placeholder where the signature goes. [`to_be_signed`] cuts the exact
//! to-be-signed bytes out of that encoding (and checks that rcgen wrote the signer's
//! AlgorithmIdentifier); a [`Signer`] signs them; [`assemble`] writes
//! SEQUENCE { toBeSigned, signatureAlgorithm, BIT STRING signature } with the `der` crate,
//! copying the to-be-signed bytes verbatim (never re-encoding them). rcgen never sees the
//! signer: no thread-locals, no callbacks, and the HSM's own error reaches the caller as is.

use super::CaError;
use crate::hsm::{SignatureScheme, Signer};
use der::asn1::{AnyRef, BitStringRef};
use der::{Decode, Encode, Reader, Sequence, SliceReader};
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

/// rcgen's algorithm for a signer's scheme (which, for an HSM key, follows the key's kind).
fn rcgen_algorithm(scheme: SignatureScheme) -> Result<&'static SignatureAlgorithm, CaError> {
    match scheme {
        SignatureScheme::EcdsaSha256 => Ok(&rcgen::PKCS_ECDSA_P256_SHA256),
        SignatureScheme::EcdsaSha384 => Ok(&rcgen::PKCS_ECDSA_P384_SHA384),
        SignatureScheme::RsaPkcs1Sha256 => Ok(&rcgen::PKCS_RSA_SHA256),
        SignatureScheme::RsaPssSha256 => Err(CaError::CertificateEncoding(
            "CA keys sign with ECDSA or RSA PKCS#1 v1.5, not RSA-PSS".into(),
        )),
    }
}

/// The subjectPublicKey BIT STRING contents of a signer's SubjectPublicKeyInfo.
pub(crate) fn public_key_bits(signer: &dyn Signer) -> Result<Vec<u8>, CaError> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(signer.public_key_der()).map_err(|e| {
        CaError::HsmPublicKey(format!("the HSM returned an unreadable public key: {e}"))
    })?;
    Ok(spki.subject_public_key.data.to_vec())
}

/// A signer's public key and algorithm as rcgen's `SigningKey`, for encoding only: its `sign`
/// returns an empty placeholder, which [`to_be_signed`] throws away. This is the only
/// implementation of rcgen's key traits over our [`Signer`].
#[derive(Clone, Debug)]
pub(crate) struct EncodeOnlyKey {
    public_key_bits: Vec<u8>,
    algorithm: &'static SignatureAlgorithm,
}

impl EncodeOnlyKey {
    pub(crate) fn of(signer: &dyn Signer) -> Result<EncodeOnlyKey, CaError> {
        Ok(EncodeOnlyKey {
            public_key_bits: public_key_bits(signer)?,
            algorithm: rcgen_algorithm(signer.scheme())?,
        })
    }
}

impl PublicKeyData for EncodeOnlyKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key_bits
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

impl SigningKey for EncodeOnlyKey {
    fn sign(&self, _to_be_signed: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(Vec::new())
    }
}

/// Certificate, CertificateList: SEQUENCE { toBeSigned, signatureAlgorithm, signature }.
#[derive(Sequence)]
struct SignedStructure<'a> {
    to_be_signed: AnyRef<'a>,
    signature_algorithm: AnyRef<'a>,
    signature: BitStringRef<'a>,
}

fn encoding(what: &str, e: der::Error) -> CaError {
    CaError::CertificateEncoding(format!("{what}: {e}"))
}

/// The exact to-be-signed bytes of `encoded` (a certificate or CRL rcgen made around an
/// [`EncodeOnlyKey`] of `signer`). Refuses an encoding whose AlgorithmIdentifier is not the
/// signer's (the signature would not match what the certificate claims).
pub(crate) fn to_be_signed(encoded: &[u8], signer: &dyn Signer) -> Result<Vec<u8>, CaError> {
    let unreadable = |e| encoding("rcgen produced an unreadable encoding", e);
    let mut reader = SliceReader::new(encoded).map_err(unreadable)?;
    let (to_be_signed, algorithm) = reader
        .sequence(|r| {
            let to_be_signed = r.tlv_bytes()?;
            let algorithm = r.tlv_bytes()?;
            BitStringRef::decode(r)?;
            Ok((to_be_signed, algorithm))
        })
        .map_err(unreadable)?;
    reader.finish().map_err(unreadable)?;
    if algorithm != signer.algorithm_identifier_der() {
        return Err(CaError::CertificateEncoding(format!(
            "rcgen wrote a signature algorithm other than the key's ({:?})",
            signer.scheme()
        )));
    }
    Ok(to_be_signed.to_vec())
}

/// SEQUENCE { to_be_signed, algorithm, BIT STRING signature }: the signed certificate or CRL.
/// `to_be_signed` and `algorithm` are DER and are copied as they are.
pub(crate) fn assemble(
    to_be_signed: &[u8],
    algorithm: &[u8],
    signature: &[u8],
) -> Result<Vec<u8>, CaError> {
    let part = |e| encoding("cannot assemble the signed structure", e);
    SignedStructure {
        to_be_signed: AnyRef::from_der(to_be_signed).map_err(part)?,
        signature_algorithm: AnyRef::from_der(algorithm).map_err(part)?,
        signature: BitStringRef::new(0, signature).map_err(part)?,
    }
    .to_der()
    .map_err(part)
}

/// One-shot: signs what rcgen encoded around an [`EncodeOnlyKey`] of `signer` (one signature)
/// and returns the signed DER.
pub(crate) fn sign_encoded(encoded: &[u8], signer: &dyn Signer) -> Result<Vec<u8>, CaError> {
    let to_be_signed = to_be_signed(encoded, signer)?;
    let signature = signer.sign(&to_be_signed)?;
    assemble(&to_be_signed, signer.algorithm_identifier_der(), &signature)
}
