//! Test certificates made with rcgen: an authority, a server certificate for `localhost` and
//! a client certificate; more client certificates on demand, expired ones too.

#![allow(dead_code, unreachable_pub)]

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
};

/// PEM certificates and keys: `(certificate chain, private key)` pairs.
pub struct Pki {
    pub ca: String,
    pub server: (String, String),
    pub client: (String, String),
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// A certificate for `name` (its common name and DNS name), signed by the authority.
    pub fn leaf(&self, name: &str) -> (String, String) {
        self.signed(name, |_| {})
    }

    /// A certificate for `name` that expired in 2000.
    pub fn expired_leaf(&self, name: &str) -> (String, String) {
        self.signed(name, |params| {
            params.not_before = date_time_ymd(1999, 1, 1);
            params.not_after = date_time_ymd(2000, 1, 1);
        })
    }

    fn signed(&self, name: &str, adjust: impl FnOnce(&mut CertificateParams)) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

pub fn new_pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Names of their own: with rcgen's one default name, a leaf's issuer reads as its own
    // subject, and stricter stacks (BoringSSL, in grpcio) take it for self-signed.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mawex test authority");
    let issuer = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key"))
        .expect("self-signed CA");
    let mut pki = Pki {
        ca: issuer.pem(),
        server: (String::new(), String::new()),
        client: (String::new(), String::new()),
        issuer,
    };
    pki.server = pki.leaf("localhost");
    pki.client = pki.leaf("pod-1.mawex.test");
    pki
}
