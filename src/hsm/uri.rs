//! RFC 7512 `pkcs11:` URIs naming keys: `pkcs11:token=tessera;object=tessera-issuing-ca;type=private`.
//! Only the path attributes Tessera needs are understood (token, serial, object, id, type);
//! an unknown path attribute is refused rather than silently ignored, and `pin-value` is refused
//! outright because a PIN must never sit in a configuration string.

use super::HsmError;

/// The kind of object a URI names (`type=` attribute).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    PrivateKey,
    PublicKey,
    SecretKey,
    Certificate,
}

/// A parsed `pkcs11:` URI.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Pkcs11Uri {
    pub token: Option<String>,
    pub serial: Option<String>,
    pub object: Option<String>,
    pub id: Option<Vec<u8>>,
    pub kind: Option<ObjectKind>,
}

impl Pkcs11Uri {
    pub fn parse(text: &str) -> Result<Self, HsmError> {
        let bad = |reason: &str| HsmError::BadUri { uri: text.to_string(), reason: reason.to_string() };
        let rest = text.strip_prefix("pkcs11:").ok_or_else(|| bad("it must start with `pkcs11:`"))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        if let Some(q) = query {
            for attr in q.split('&').filter(|a| !a.is_empty()) {
                let name = attr.split_once('=').map(|(n, _)| n).unwrap_or(attr);
                if name == "pin-value" || name == "pin-source" {
                    return Err(bad("PINs do not belong in key URIs; set pin_env or pin_file in the HSM config"));
                }
            }
        }
        let mut uri = Pkcs11Uri::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr.split_once('=').ok_or_else(|| bad(&format!("attribute `{attr}` has no `=`")))?;
            let value = percent_decode(value).ok_or_else(|| bad(&format!("attribute `{name}` has a bad %-escape")))?;
            let as_text = || String::from_utf8(value.clone()).map_err(|_| bad(&format!("attribute `{name}` is not UTF-8")));
            match name {
                "token" => uri.token = Some(as_text()?),
                "serial" => uri.serial = Some(as_text()?),
                "object" => uri.object = Some(as_text()?),
                "id" => uri.id = Some(value),
                "type" => {
                    uri.kind = Some(match as_text()?.as_str() {
                        "private" => ObjectKind::PrivateKey,
                        "public" => ObjectKind::PublicKey,
                        "secret-key" => ObjectKind::SecretKey,
                        "cert" => ObjectKind::Certificate,
                        other => return Err(bad(&format!("unknown type `{other}` (private, public, secret-key, cert)"))),
                    })
                }
                "manufacturer" | "model" | "library-manufacturer" | "library-description" | "library-version"
                | "slot-description" | "slot-manufacturer" | "slot-id" => {}
                "pin-value" => return Err(bad("PINs do not belong in key URIs; set pin_env or pin_file in the HSM config")),
                other => return Err(bad(&format!("unknown attribute `{other}`"))),
            }
        }
        if uri.object.is_none() && uri.id.is_none() {
            return Err(bad("it names no key: give `object=` (label) or `id=`"));
        }
        Ok(uri)
    }

    /// The URI text for a key of `kind` labelled `label` on token `token`.
    pub fn for_label(token: &str, label: &str, kind: ObjectKind) -> String {
        let kind = match kind {
            ObjectKind::PrivateKey => "private",
            ObjectKind::PublicKey => "public",
            ObjectKind::SecretKey => "secret-key",
            ObjectKind::Certificate => "cert",
        };
        format!("pkcs11:token={};object={};type={kind}", percent_encode(token), percent_encode(label))
    }
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_label_id_and_type() {
        let u = Pkcs11Uri::parse("pkcs11:token=tessera;object=tessera%20ca;id=%01%ff;type=private").unwrap();
        assert_eq!(u.token.as_deref(), Some("tessera"));
        assert_eq!(u.object.as_deref(), Some("tessera ca"));
        assert_eq!(u.id, Some(vec![1, 0xff]));
        assert_eq!(u.kind, Some(ObjectKind::PrivateKey));
    }

    #[test]
    fn refuses_pin_value_and_unknown_attributes() {
        let e = Pkcs11Uri::parse("pkcs11:object=a?pin-value=1234").unwrap_err().to_string();
        assert!(e.contains("PINs do not belong in key URIs"), "{e}");
        let e = Pkcs11Uri::parse("pkcs11:objekt=a").unwrap_err().to_string();
        assert!(e.contains("unknown attribute `objekt`"), "{e}");
        let e = Pkcs11Uri::parse("file:a").unwrap_err().to_string();
        assert!(e.contains("must start with `pkcs11:`"), "{e}");
    }

    #[test]
    fn round_trips_labels() {
        let text = Pkcs11Uri::for_label("tok en", "a;b", ObjectKind::SecretKey);
        let u = Pkcs11Uri::parse(&text).unwrap();
        assert_eq!(u.object.as_deref(), Some("a;b"));
        assert_eq!(u.token.as_deref(), Some("tok en"));
    }
}
