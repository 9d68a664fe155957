//! RFC 5280 CRLReason: the one list of revocation reasons and their codes, used by the CRL,
//! OCSP responses (where it is also the ASN.1 ENUMERATED), `lifecycle` (which stores the code)
//! and the gRPC API.

/// RFC 5280 §5.3.1 CRLReason, with the RFC's codes. 7 is unassigned; removeFromCRL (8) belongs
/// to delta CRLs, which Tessera does not make.
#[derive(der::Enumerated, Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RevocationReason {
    Unspecified = 0,
    KeyCompromise = 1,
    CaCompromise = 2,
    AffiliationChanged = 3,
    Superseded = 4,
    CessationOfOperation = 5,
    CertificateHold = 6,
    PrivilegeWithdrawn = 9,
    AaCompromise = 10,
}

impl RevocationReason {
    /// Every reason Tessera records.
    pub const ALL: [RevocationReason; 9] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::CertificateHold,
        RevocationReason::PrivilegeWithdrawn,
        RevocationReason::AaCompromise,
    ];

    /// The RFC 5280 code (what the store keeps).
    pub fn code(self) -> i64 {
        self as i64
    }

    /// The reason with this RFC 5280 code; `None` for 7, 8 and anything out of range.
    pub fn from_code(code: i64) -> Option<RevocationReason> {
        RevocationReason::ALL.into_iter().find(|r| r.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unassigned_codes_are_refused() {
        for reason in RevocationReason::ALL {
            assert_eq!(RevocationReason::from_code(reason.code()), Some(reason));
        }
        assert_eq!(RevocationReason::CertificateHold.code(), 6);
        assert_eq!(RevocationReason::AaCompromise.code(), 10);
        for code in [-1, 7, 8, 11] {
            assert_eq!(RevocationReason::from_code(code), None, "{code}");
        }
    }
}
