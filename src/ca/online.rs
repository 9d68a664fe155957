//! The CA as the server holds it: the HSM, the issuing CA (key found by its URI), the profiles,
//! and the public chain. Opened once at start-up and shared (cheap to clone behind an `Arc`).

use super::{CaError, IssuingCa, ProfileSet, StoredCa};
use crate::hsm::{Hsm, HsmConfig};
use std::path::Path;

/// What `tessera serve` (and `tessera admin`) sign with.
pub struct OnlineCa {
    /// The HSM session pool (also holds the OCSP responder and wrapping keys).
    pub hsm: Hsm,
    pub issuing: IssuingCa,
    pub profiles: ProfileSet,
    /// Root and issuing certificates as read from the CA's data directory.
    pub stored: StoredCa,
}

impl OnlineCa {
    /// Opens the HSM named by `hsm_config`, finds the issuing key of the CA in `data_dir`
    /// (made by `tessera ca init`), and loads the profiles from `profiles_dir` or the built-in
    /// set.
    pub fn open(
        hsm_config: &Path,
        data_dir: &Path,
        profiles_dir: Option<&Path>,
    ) -> Result<OnlineCa, CaError> {
        let stored = StoredCa::load(data_dir)?;
        let profiles = match profiles_dir {
            Some(dir) => ProfileSet::load_dir(dir)?,
            None => ProfileSet::built_in(),
        };
        let hsm = Hsm::open(&HsmConfig::load(hsm_config)?)?;
        let issuing = stored.issuing_ca(&hsm)?;
        Ok(OnlineCa {
            hsm,
            issuing,
            profiles,
            stored,
        })
    }

    /// The operator CA in `data_dir` (made by `tessera ca init-operators`) as the CA that signs,
    /// with the operator-client profile only: what `tessera admin issue-client-cert` issues with.
    pub fn open_operators(hsm_config: &Path, data_dir: &Path) -> Result<OnlineCa, CaError> {
        let stored = StoredCa::load(data_dir)?;
        let operators = super::StoredOperatorCa::load(data_dir)?;
        let profiles = ProfileSet::from_profiles(vec![super::Profile::from_toml(
            super::profile::OPERATOR_CLIENT_PROFILE,
            include_str!("../../profiles/operator-client.toml"),
            "built-in profile operator-client",
        )?]);
        let hsm = Hsm::open(&HsmConfig::load(hsm_config)?)?;
        let issuing = operators.operator_ca(&hsm)?;
        Ok(OnlineCa {
            hsm,
            issuing,
            profiles,
            stored,
        })
    }

    /// The chain relying parties need, PEM: issuing CA, then root.
    pub fn chain_pem(&self) -> String {
        format!(
            "{}{}",
            super::issue::certificate_pem(&self.stored.issuing_der),
            super::issue::certificate_pem(&self.stored.root_der)
        )
    }
}
