//! Trust anchors: the Yubico bundle shipped inside Tessera (each certificate pinned by the
//! SHA-256 of its DER, checked when loaded) and whatever the configuration adds or puts instead.

use super::certificate::{ParsedCertificate, decode_certificates};
use super::error::{AttestError, CertificateRole};

/// A certificate compiled into Tessera, with the SHA-256 (hex, of its DER) it must have.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PinnedCertificate {
    pub(crate) name: &'static str,
    pub(crate) pem: &'static [u8],
    pub(crate) sha256: &'static str,
}

macro_rules! pinned {
    ($file:literal, $sha:literal) => {
        PinnedCertificate {
            name: $file,
            pem: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../trust/yubico/",
                $file
            )),
            sha256: $sha,
        }
    };
}

/// Yubico roots. The superseded 2016 issue of the 263751 root (pathlen 0) is not shipped: its
/// 2018 re-issue has the same name and key, so it verifies the same chains.
pub(crate) const YUBICO_ROOTS: &[PinnedCertificate] = &[
    pinned!(
        "yubico-piv-root-ca-serial-263751.pem",
        "63ece914e54dd87915f34033c85af4c0696ba1512f8add66ced738331207b546"
    ),
    pinned!(
        "yubico-u2f-root-ca-serial-457200631.pem",
        "0fa1386f80eb8713263ae5c1d84deb455bdf08aea50ab05503cefee82b092d42"
    ),
    pinned!(
        "yubico-attestation-root-1.pem",
        "62760c6a6ef91679f454c8902b80fd009825b3f25da90f1fbace2ec6586cd5a8"
    ),
];

/// Yubico's published intermediates under Attestation Root 1. Tokens with firmware 5.7.4 and
/// later carry only their device certificate, which names one of the "PIV Attestation" ones
/// as issuer, so the verifier supplies these.
pub(crate) const YUBICO_INTERMEDIATES: &[PinnedCertificate] = &[
    pinned!(
        "yubico-attestation-intermediate-a-1.pem",
        "4698a1d3389c3ec60016c216250f1d0439922832d65142327436376dc2942b55"
    ),
    pinned!(
        "yubico-attestation-intermediate-b-1.pem",
        "d4cc3f456fdaf4e7812a21aab1dfe9d8e27d24e2fd2d6f21c9940109f0daa754"
    ),
    pinned!(
        "yubico-piv-attestation-a-1.pem",
        "6de693f05376f5d8ca29069261e1c8626c75d503bd2edbfd75354cad1f722870"
    ),
    pinned!(
        "yubico-piv-attestation-b-1.pem",
        "2d55b7998f4e42569d6d8fa382b6dc77d1dacf07358b19701163892922b17052"
    ),
    pinned!(
        "yubico-piv-attestation-b2-1.pem",
        "0c90b7d184a36edf50a35f9be935f0c5689bfdcfe5bdd073366cafb49061a440"
    ),
];

/// A certificate the verifier trusts or may use, with where it came from.
#[derive(Clone, Debug)]
pub(crate) struct TrustedCertificate {
    pub(crate) certificate: ParsedCertificate,
    pub(crate) source: String,
}

impl TrustedCertificate {
    pub(crate) fn role(&self) -> CertificateRole {
        CertificateRole::Trusted(self.source.clone())
    }
}

/// The roots a chain must end at, and intermediates the verifier may use to get there.
/// Build with [`TrustAnchors::yubico`] or [`TrustAnchors::builder`].
#[derive(Clone, Debug)]
pub struct TrustAnchors {
    pub(crate) anchors: Vec<TrustedCertificate>,
    pub(crate) intermediates: Vec<TrustedCertificate>,
}

impl TrustAnchors {
    /// Yubico's roots and published intermediates, as shipped with Tessera.
    pub fn yubico() -> Result<TrustAnchors, AttestError> {
        TrustAnchors::builder()
            .with_yubico_roots()?
            .with_yubico_intermediates()?
            .build()
    }

    /// An empty builder: add the Yubico bundle, your own roots, or both.
    pub fn builder() -> TrustAnchorsBuilder {
        TrustAnchorsBuilder {
            anchors: Vec::new(),
            intermediates: Vec::new(),
        }
    }

    /// Subjects (RFC 4514) and sources of the anchors, for display.
    pub fn anchor_descriptions(&self) -> Vec<String> {
        self.anchors
            .iter()
            .map(|a| format!("{} ({})", a.certificate.subject_string(), a.source))
            .collect()
    }
}

/// Builds a [`TrustAnchors`]. Each method that takes bytes accepts PEM (one or more
/// CERTIFICATE blocks) or one DER certificate, named by `source` in error messages.
#[derive(Clone, Debug)]
pub struct TrustAnchorsBuilder {
    anchors: Vec<TrustedCertificate>,
    intermediates: Vec<TrustedCertificate>,
}

impl TrustAnchorsBuilder {
    /// Adds Yubico's roots (PIV Root CA 263751, U2F Root CA 457200631, Attestation Root 1).
    pub fn with_yubico_roots(mut self) -> Result<Self, AttestError> {
        self.anchors.extend(load_pinned(YUBICO_ROOTS)?);
        Ok(self)
    }

    /// Adds Yubico's published intermediates (needed for firmware 5.7.4 and later).
    pub fn with_yubico_intermediates(mut self) -> Result<Self, AttestError> {
        self.intermediates
            .extend(load_pinned(YUBICO_INTERMEDIATES)?);
        Ok(self)
    }

    /// Adds trust anchors (roots) from PEM or DER bytes.
    pub fn with_anchors(mut self, bytes: &[u8], source: &str) -> Result<Self, AttestError> {
        let role = CertificateRole::Trusted(source.to_string());
        for certificate in decode_certificates(bytes, &role)? {
            self.anchors.push(TrustedCertificate {
                certificate,
                source: source.to_string(),
            });
        }
        Ok(self)
    }

    /// Adds intermediates the verifier may use (not trusted by themselves).
    pub fn with_intermediates(mut self, bytes: &[u8], source: &str) -> Result<Self, AttestError> {
        let role = CertificateRole::Trusted(source.to_string());
        for certificate in decode_certificates(bytes, &role)? {
            self.intermediates.push(TrustedCertificate {
                certificate,
                source: source.to_string(),
            });
        }
        Ok(self)
    }

    /// Finishes; refuses an empty set of anchors.
    pub fn build(self) -> Result<TrustAnchors, AttestError> {
        if self.anchors.is_empty() {
            return Err(AttestError::NoTrustAnchors);
        }
        Ok(TrustAnchors {
            anchors: self.anchors,
            intermediates: self.intermediates,
        })
    }
}

/// Loads compiled-in certificates, refusing any whose SHA-256 is not the pinned one.
pub(crate) fn load_pinned(
    entries: &[PinnedCertificate],
) -> Result<Vec<TrustedCertificate>, AttestError> {
    entries
        .iter()
        .map(|entry| {
            let source = format!("bundled {}", entry.name);
            let role = CertificateRole::Trusted(source.clone());
            let mut certs = decode_certificates(entry.pem, &role)?;
            if certs.len() != 1 {
                return Err(AttestError::CertificateCount {
                    role,
                    found: certs.len(),
                });
            }
            let certificate = certs.remove(0);
            let actual = certificate.sha256_hex();
            if actual != entry.sha256 {
                return Err(AttestError::TrustBundlePinMismatch {
                    name: entry.name.to_string(),
                    expected: entry.sha256.to_string(),
                    actual,
                });
            }
            Ok(TrustedCertificate {
                certificate,
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_bundle_loads_with_its_pins() {
        let trust = TrustAnchors::yubico().unwrap();
        assert_eq!(trust.anchors.len(), 3);
        assert_eq!(trust.intermediates.len(), 5);
        let names = trust.anchor_descriptions().join("\n");
        assert!(
            names.contains("CN=Yubico PIV Root CA Serial 263751"),
            "{names}"
        );
        assert!(names.contains("CN=Yubico Attestation Root 1"), "{names}");
    }

    #[test]
    fn a_bundled_certificate_with_another_hash_is_refused() {
        let mut tampered = YUBICO_ROOTS[0];
        tampered.sha256 = "0000000000000000000000000000000000000000000000000000000000000000";
        let err = load_pinned(&[tampered]).unwrap_err();
        assert_eq!(err.code(), "trust-bundle-pin-mismatch");
        assert_eq!(
            err,
            AttestError::TrustBundlePinMismatch {
                name: "yubico-piv-root-ca-serial-263751.pem".into(),
                expected: tampered.sha256.into(),
                actual: "63ece914e54dd87915f34033c85af4c0696ba1512f8add66ced738331207b546".into(),
            }
        );
    }

    #[test]
    fn a_bundled_file_swapped_for_another_certificate_is_refused() {
        let swapped = PinnedCertificate {
            pem: YUBICO_ROOTS[1].pem,
            ..YUBICO_ROOTS[0]
        };
        let err = load_pinned(&[swapped]).unwrap_err();
        assert_eq!(err.code(), "trust-bundle-pin-mismatch");
    }

    #[test]
    fn no_anchors_is_an_error() {
        let err = TrustAnchors::builder()
            .with_yubico_intermediates()
            .unwrap()
            .build()
            .unwrap_err();
        assert_eq!(err, AttestError::NoTrustAnchors);
    }
}
