//! One ACME account and one order (RFC 8555 §7.3, §7.4): the account restored from its
//! owner-only file or created and saved there, then new-order, an HTTP-01 challenge per name
//! published on the responder, finalize with a CSR for a fresh key, and the chain.

use std::path::Path;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use crate::acme::client::AcmeHttp;
use crate::acme::http01::Challenges;
use crate::acme::AcmeError;

/// How long the CA may take to validate the challenges.
pub const ACME_VALIDATION_TIMEOUT_SECS: u64 = 120;
/// How long the CA may take to issue once finalized.
pub const ACME_ISSUANCE_TIMEOUT_SECS: u64 = 120;
/// The first wait between two polls of an order (doubled each time, as the CA allows).
const POLL_DELAY_INITIAL_MS: u64 = 250;

/// A certificate chain (PEM, leaf first) and its private key (PEM).
pub struct Issued {
    pub chain_pem: String,
    /// Secret: written owner-only, never logged.
    pub key_pem: String,
}

/// The account of `directory_url`: restored from `path`, or created (with `contact`) and
/// saved there owner-only. Creating agrees to the CA's terms of service: the operator agreed by
/// configuring the CA.
pub async fn account(
    http: &AcmeHttp,
    directory_url: &str,
    contact: Option<&str>,
    path: &Path,
) -> Result<Account, AcmeError> {
    if path.exists() {
        let text =
            petrel_seal::secret_file::read(path).map_err(|source| AcmeError::AccountFile {
                path: path.to_path_buf(),
                source,
            })?;
        let credentials: AccountCredentials =
            serde_json::from_str(&text).map_err(|source| AcmeError::AccountJson {
                path: path.to_path_buf(),
                source,
            })?;
        let account = Account::builder_with_http(Box::new(http.clone()))
            .from_credentials(credentials)
            .await?;
        return Ok(account);
    }
    let contacts: Vec<&str> = contact.into_iter().collect();
    let (account, credentials) = Account::builder_with_http(Box::new(http.clone()))
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory_url.to_owned(),
            None,
        )
        .await?;
    let json = serde_json::to_vec(&credentials).map_err(|source| AcmeError::AccountJson {
        path: path.to_path_buf(),
        source,
    })?;
    crate::tls_cert::write_atomic(path, &json, 0o600)?;
    tracing::info!(
        path = %path.display(),
        account = account.id(),
        "ACME account created; its key is kept owner-only"
    );
    Ok(account)
}

/// Orders a certificate for `names`, answering HTTP-01 through `challenges`.
pub async fn order(
    account: &Account,
    names: &[String],
    challenges: &Challenges,
) -> Result<Issued, AcmeError> {
    let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let mut authorizations = order.authorizations();
    let mut seen = 0usize;
    while let Some(next) = authorizations.next().await {
        seen += 1;
        if seen > names.len() {
            return Err(AcmeError::TooManyAuthorizations { names: names.len() });
        }
        let mut authz = next?;
        let name = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            // Validated for this account not long ago: nothing to prove again.
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(AcmeError::Authorization {
                    name,
                    status: format!("{other:?}"),
                })
            }
        }
        let mut challenge = authz
            .challenge(ChallengeType::Http01)
            .ok_or_else(|| AcmeError::NoHttp01 { name: name.clone() })?;
        let key_authorization = challenge.key_authorization();
        if !challenges.publish(&challenge.token, key_authorization.as_str()) {
            return Err(AcmeError::TooManyAuthorizations { names: names.len() });
        }
        challenge.set_ready().await?;
    }
    let status = order
        .poll_ready(&retry_policy(ACME_VALIDATION_TIMEOUT_SECS))
        .await?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::OrderStatus {
            status: format!("{status:?}"),
        });
    }
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order
        .poll_certificate(&retry_policy(ACME_ISSUANCE_TIMEOUT_SECS))
        .await?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

fn retry_policy(timeout_secs: u64) -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(POLL_DELAY_INITIAL_MS))
        .backoff(2.0)
        .timeout(Duration::from_secs(timeout_secs))
}
