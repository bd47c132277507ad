//! Test certificates made with rcgen: an authority, a server certificate for `localhost` and
//! a client certificate.

#![allow(dead_code, unreachable_pub)]

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// PEM certificates and keys: `(certificate chain, private key)` pairs.
pub struct Pki {
    pub ca: String,
    pub server: (String, String),
    pub client: (String, String),
}

pub fn new_pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Names of their own: with rcgen's one default name, a leaf's issuer reads as its own
    // subject, and stricter stacks (BoringSSL, in grpcio) take it for self-signed.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mawex test authority");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key"))
        .expect("self-signed CA");
    let leaf = |name: &str| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &ca).expect("signed");
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        server: leaf("localhost"),
        client: leaf("pod-1.mawex.test"),
        ca: ca.pem(),
    }
}
