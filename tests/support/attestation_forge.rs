//! Forged YubiKey-style attestation chains made with rcgen and throwaway keys, for tests of
//! the `attest` module (unit tests include this file by path) and of `tessera attest verify`.
//! Nothing here is a real Yubico key.
#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, SubjectPublicKeyInfo,
};

pub const YUBICO_ARC: [u64; 9] = [1, 3, 6, 1, 4, 1, 41482, 3, 0];

/// OID of a Yubico attestation extension, `.3.<n>`.
pub fn yubico_oid(n: u64) -> Vec<u64> {
    let mut oid = YUBICO_ARC.to_vec();
    *oid.last_mut().unwrap() = n;
    oid
}

/// Minimal DER INTEGER for a u32, as Yubico encodes the serial.
pub fn der_integer(value: u32) -> Vec<u8> {
    let mut bytes = value.to_be_bytes().to_vec();
    while bytes.len() > 1 && bytes[0] == 0 && bytes[1] & 0x80 == 0 {
        bytes.remove(0);
    }
    if bytes[0] & 0x80 != 0 {
        bytes.insert(0, 0);
    }
    let mut out = vec![0x02, bytes.len() as u8];
    out.extend(bytes);
    out
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// What goes into a forged slot certificate. `None` leaves an extension out.
#[derive(Clone, Debug)]
pub struct SlotSpec {
    pub common_name: String,
    pub firmware: Option<Vec<u8>>,
    pub serial: Option<Vec<u8>>,
    pub policy: Option<Vec<u8>>,
    pub form_factor: Option<Vec<u8>>,
    /// (OID arcs, value, critical)
    pub extra_extensions: Vec<(Vec<u64>, Vec<u8>, bool)>,
    /// Subject key as SubjectPublicKeyInfo DER; `None` = a fresh P-256 key.
    pub subject_spki_der: Option<Vec<u8>>,
}

impl SlotSpec {
    /// Slot 9a, firmware 5.7.4, serial 12345678, PIN once, touch never, USB-C keychain.
    pub fn typical() -> SlotSpec {
        SlotSpec {
            common_name: "YubiKey PIV Attestation 9a".into(),
            firmware: Some(vec![5, 7, 4]),
            serial: Some(der_integer(12345678)),
            policy: Some(vec![2, 1]),
            form_factor: Some(vec![0x03]),
            extra_extensions: Vec::new(),
            subject_spki_der: None,
        }
    }
}

/// A throwaway root (P-256), optional chain of intermediates, and a device certificate (P-384
/// key) that signs slot certificates.
pub struct ForgedPki {
    pub root_der: Vec<u8>,
    pub root_pem: String,
    pub intermediates_der: Vec<Vec<u8>>,
    pub device_der: Vec<u8>,
    pub device_pem: String,
    device_params: CertificateParams,
    device_key: KeyPair,
}

impl ForgedPki {
    pub fn new() -> ForgedPki {
        ForgedPki::build(0, IsCa::Ca(BasicConstraints::Constrained(0)))
    }

    /// `depth` intermediates between root and device; `device_ca` decides the device
    /// certificate's basicConstraints (`IsCa::NoCa` leaves it out, like firmware 5.2.4).
    pub fn build(depth: usize, device_ca: IsCa) -> ForgedPki {
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut root_params = CertificateParams::default();
        root_params.distinguished_name = name("Tessera Forged Test Root (NOT Yubico)");
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let root = root_params.self_signed(&root_key).unwrap();

        let mut issuer_params = root_params;
        let mut issuer_key = root_key;
        let mut intermediates_der = Vec::new();
        for n in 0..depth {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name = name(&format!("Forged Intermediate {n}"));
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = params
                .signed_by(&key, &Issuer::from_params(&issuer_params, &issuer_key))
                .unwrap();
            intermediates_der.push(cert.der().to_vec());
            issuer_params = params;
            issuer_key = key;
        }

        let device_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let mut device_params = CertificateParams::default();
        device_params.distinguished_name = name("YubiKey PIV Attestation");
        device_params.is_ca = device_ca;
        device_params.custom_extensions = vec![CustomExtension::from_oid_content(
            &yubico_oid(3),
            vec![5, 7, 4],
        )];
        let device = device_params
            .signed_by(
                &device_key,
                &Issuer::from_params(&issuer_params, &issuer_key),
            )
            .unwrap();
        ForgedPki {
            root_der: root.der().to_vec(),
            root_pem: root.pem(),
            intermediates_der,
            device_der: device.der().to_vec(),
            device_pem: device.pem(),
            device_params,
            device_key,
        }
    }

    /// A slot certificate signed by this device's key.
    pub fn slot(&self, spec: &SlotSpec) -> Vec<u8> {
        self.slot_signed_by(spec, &self.device_key)
    }

    /// A slot certificate signed by this device's key but naming `issuer_cn` as its issuer.
    pub fn slot_naming_issuer(&self, spec: &SlotSpec, issuer_cn: &str) -> Vec<u8> {
        forge_slot(spec, &params_named(issuer_cn), &self.device_key)
    }

    /// A slot certificate naming this device as issuer but signed by `key`.
    pub fn slot_signed_by(&self, spec: &SlotSpec, key: &KeyPair) -> Vec<u8> {
        forge_slot(spec, &self.device_params, key)
    }
}

/// A slot certificate with the given issuer name and signing key.
pub fn forge_slot(spec: &SlotSpec, issuer_params: &CertificateParams, key: &KeyPair) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&spec.common_name);
    let mut extensions = Vec::new();
    for (n, value) in [
        (3, &spec.firmware),
        (7, &spec.serial),
        (8, &spec.policy),
        (9, &spec.form_factor),
    ] {
        if let Some(value) = value {
            extensions.push(CustomExtension::from_oid_content(
                &yubico_oid(n),
                value.clone(),
            ));
        }
    }
    for (oid, value, critical) in &spec.extra_extensions {
        let mut extension = CustomExtension::from_oid_content(oid, value.clone());
        extension.set_criticality(*critical);
        extensions.push(extension);
    }
    params.custom_extensions = extensions;
    let issuer = Issuer::from_params(issuer_params, key);
    let cert = match &spec.subject_spki_der {
        Some(spki) => {
            let public_key = SubjectPublicKeyInfo::from_der(spki).unwrap();
            params.signed_by(&public_key, &issuer).unwrap()
        }
        None => {
            let subject_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            params.signed_by(&subject_key, &issuer).unwrap()
        }
    };
    cert.der().to_vec()
}

/// CertificateParams naming `cn`, for forging a certificate that claims an issuer by name.
pub fn params_named(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn);
    params
}

pub fn fresh_p256_key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
}
