//! RFC 7512 `pkcs11:` URIs naming keys: `pkcs11:token=T;object=L;id=%01%02;type=private`.
//! Only the path attributes Tessera needs are interpreted; a `pin-value` is refused (PINs come
//! from the configured source only), other query attributes are ignored.

use std::fmt::Write as _;

use super::error::HsmError;

/// The parts of a `pkcs11:` URI that select a key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    pub token: Option<String>,
    pub object: Option<String>,
    pub id: Option<Vec<u8>>,
    /// `private`, `public`, `secret-key`, … as written in the URI.
    pub object_type: Option<String>,
}

impl Pkcs11Uri {
    pub fn parse(uri: &str) -> Result<Pkcs11Uri, HsmError> {
        let invalid = |reason: &str| HsmError::UriInvalid {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or_else(|| invalid("it does not start with pkcs11:"))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        if let Some(q) = query
            && q.split('&')
                .any(|a| a.starts_with("pin-value=") || a.starts_with("pin-source="))
        {
            return Err(invalid(
                "a PIN must not be part of a key URI; set pin_env or pin_file in the HSM config",
            ));
        }
        let mut out = Pkcs11Uri::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| invalid(&format!("attribute `{attr}` has no value")))?;
            let value = percent_decode(value)
                .ok_or_else(|| invalid(&format!("bad %-escape in `{attr}`")))?;
            let text = || {
                String::from_utf8(value.clone())
                    .map_err(|_| invalid(&format!("`{name}` is not UTF-8")))
            };
            match name {
                "token" => out.token = Some(text()?),
                "object" => out.object = Some(text()?),
                "id" => out.id = Some(value),
                "type" => {
                    let t = text()?;
                    if !matches!(
                        t.as_str(),
                        "private" | "public" | "secret-key" | "cert" | "data"
                    ) {
                        return Err(invalid(&format!("unknown type `{t}`")));
                    }
                    out.object_type = Some(t);
                }
                // Other RFC 7512 path attributes narrow the module/slot; the config already does.
                "manufacturer"
                | "model"
                | "serial"
                | "library-description"
                | "library-manufacturer"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer"
                | "slot-id" => {}
                other => return Err(invalid(&format!("unknown attribute `{other}`"))),
            }
        }
        if out.object.is_none() && out.id.is_none() {
            return Err(invalid("it names no key: give object= and/or id="));
        }
        Ok(out)
    }

    /// Canonical text form (`token`, `object`, `id`, `type`, in that order).
    pub fn to_uri_string(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = &self.token {
            parts.push(format!("token={}", percent_encode(t.as_bytes())));
        }
        if let Some(o) = &self.object {
            parts.push(format!("object={}", percent_encode(o.as_bytes())));
        }
        if let Some(id) = &self.id {
            let mut s = String::from("id=");
            for b in id {
                let _ = write!(s, "%{b:02X}");
            }
            parts.push(s);
        }
        if let Some(t) = &self.object_type {
            parts.push(format!("type={t}"));
        }
        format!("pkcs11:{}", parts.join(";"))
    }
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn percent_encode(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        if c.is_ascii_alphanumeric() || b"-._~:[]@!$'()*+,=&".contains(&c) {
            s.push(c as char);
        } else {
            let _ = write!(s, "%{c:02X}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let u = Pkcs11Uri::parse("pkcs11:token=my%20tok;object=root-ca;id=%01%ab;type=private")
            .unwrap();
        assert_eq!(u.token.as_deref(), Some("my tok"));
        assert_eq!(u.object.as_deref(), Some("root-ca"));
        assert_eq!(u.id.as_deref(), Some(&[1u8, 0xab][..]));
        assert_eq!(
            u.to_uri_string(),
            "pkcs11:token=my%20tok;object=root-ca;id=%01%AB;type=private"
        );
    }

    #[test]
    fn refuses_pin_and_garbage() {
        let e = Pkcs11Uri::parse("pkcs11:object=a?pin-value=1234")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a PIN must not be part of a key URI"), "{e}");
        let e = Pkcs11Uri::parse("file:///x").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid pkcs11: URI `file:///x`: it does not start with pkcs11:; write it as pkcs11:token=LABEL;object=KEY;type=private (RFC 7512)"
        );
        assert!(Pkcs11Uri::parse("pkcs11:token=x").is_err());
        assert!(Pkcs11Uri::parse("pkcs11:object=%zz").is_err());
    }
}
