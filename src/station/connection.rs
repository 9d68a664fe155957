//! The gRPC client: one channel over TLS 1.3 (rustls through tonic) presenting the station's
//! client certificate, and the three services the station calls.
use super::{ServerError, StationConfig, StationError};
use crate::protocol::pb;
use crate::protocol::pb::certificate_service_client::CertificateServiceClient;
use crate::protocol::pb::enrollment_service_client::EnrollmentServiceClient;
use crate::protocol::pb::token_service_client::TokenServiceClient;
use std::path::Path;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use zeroize::Zeroizing;

pub struct ServerConnection {
    pub enrollment: EnrollmentServiceClient<Channel>,
    pub tokens: TokenServiceClient<Channel>,
    pub certificates: CertificateServiceClient<Channel>,
}

fn read(what: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, StationError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| StationError::ReadFile {
            what,
            path: path.to_path_buf(),
            source,
        })
}

impl ServerConnection {
    pub async fn connect(config: &StationConfig) -> Result<ServerConnection, StationError> {
        let ca = read("CA certificate", &config.ca_cert)?;
        let cert = read("client certificate", &config.client_cert)?;
        let key = read("client key", &config.client_key)?;
        let connect_error = |detail: String| StationError::Connect {
            server: config.server.clone(),
            detail,
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&*ca))
            .identity(Identity::from_pem(&*cert, &*key));
        let channel = Channel::from_shared(config.server.clone())
            .map_err(|e| StationError::ServerUrl(format!("{}: {e}", config.server)))?
            .tls_config(tls)
            .map_err(|e| connect_error(error_chain(&e)))?
            .connect()
            .await
            .map_err(|e| connect_error(error_chain(&e)))?;
        Ok(ServerConnection {
            enrollment: EnrollmentServiceClient::new(channel.clone()),
            tokens: TokenServiceClient::new(channel.clone()),
            certificates: CertificateServiceClient::new(channel),
        })
    }

    /// The token the server knows by this serial, or `None` when it has no record of it.
    pub async fn token(&mut self, serial: &str) -> Result<Option<pb::Token>, StationError> {
        match self
            .tokens
            .get_token(pb::GetTokenRequest {
                serial: serial.into(),
            })
            .await
        {
            Ok(response) => Ok(response.into_inner().token),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(ServerError::from_status("GetToken", &status).into()),
        }
    }

    /// Every certificate the server issued for keys on this token (all pages).
    pub async fn certificates_of_token(
        &mut self,
        serial: &str,
    ) -> Result<Vec<pb::Certificate>, StationError> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .certificates
                .list_certificates(pb::ListCertificatesRequest {
                    page_size: 100,
                    page_token: page_token.clone(),
                    person_external_id: String::new(),
                    token_serial: serial.into(),
                })
                .await
                .map_err(|s| ServerError::from_status("ListCertificates", &s))?
                .into_inner();
            all.extend(page.certificates);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }
}

/// An error and its causes on one line (transport errors hide the useful part in a source).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Many errors repeat their source in their own message; say each part once.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
