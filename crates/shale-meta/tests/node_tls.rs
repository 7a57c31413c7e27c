//! The metadata quorum under node-to-node mutual TLS: three voters with certificates from
//! one cluster CA, each naming its node (`node-<id>`), elect a leader and forward writes as
//! over plain TCP; a certificate from the same CA that names no node (a client's) is
//! dropped after the handshake, a plain TCP peer never gets an answer, and a node cannot
//! speak in another node's name.

use shale_meta::{MetaConfig, MetaNode, MetaOptions, TopicCommand};
use shale_security::node::NodeTls;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "shale cluster CA");
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate and key (PEM) for the DNS names `names`.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn node_tls(&self, id: u64) -> NodeTls {
        let (cert, key) = self.issue(&["localhost", &format!("node-{id}")]);
        let ca = self.pem.clone();
        let get = move |k: &str| match k {
            "ssl.keystore.certificate.chain" => Some(cert.clone()),
            "ssl.keystore.key" => Some(key.clone()),
            "ssl.truststore.certificates" => Some(ca.clone()),
            _ => None,
        };
        NodeTls::from_settings(&get, id).unwrap()
    }

    /// A raw TLS client presenting a certificate for `names`, trusting this CA.
    fn client(&self, names: &[&str]) -> tokio_rustls::TlsConnector {
        self.client_trusting(&self.pem, names)
    }

    /// A raw TLS client presenting a certificate from this CA, trusting `trusted` (PEM).
    fn client_trusting(&self, trusted: &str, names: &[&str]) -> tokio_rustls::TlsConnector {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let (cert, key) = self.issue(names);
        let roots = vec![CertificateDer::from_pem_slice(trusted.as_bytes()).unwrap()];
        let identity = (
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        );
        let config = shale_security::tls::client_config(&roots, Some(identity)).unwrap();
        tokio_rustls::TlsConnector::from(config)
    }
}

struct Cluster {
    _dirs: Vec<tempfile::TempDir>,
    voters: BTreeMap<u64, String>,
    nodes: Vec<Arc<MetaNode>>,
}

async fn start(ca: &Ca) -> Cluster {
    let mut listeners = Vec::new();
    let mut voters = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        voters.insert(id, l.local_addr().unwrap().to_string());
        listeners.push(l);
    }
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let starts: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let id = i as u64 + 1;
            let config = MetaConfig {
                node_id: id,
                data_dir: dirs[i].path().to_path_buf(),
                rpc_addr: voters[&id].clone(),
                voters: voters.clone(),
            };
            let options = MetaOptions {
                startup_timeout: Duration::from_secs(20),
                tls: Some(ca.node_tls(id)),
                ..MetaOptions::default()
            };
            tokio::spawn(
                async move { MetaNode::start_with_listener(config, options, Some(l)).await },
            )
        })
        .collect();
    let mut nodes = Vec::new();
    for s in starts {
        nodes.push(s.await.unwrap().expect("start voter"));
    }
    Cluster {
        _dirs: dirs,
        voters,
        nodes,
    }
}

fn create_topic(name: &str) -> TopicCommand {
    TopicCommand::CreateTopic {
        name: name.to_string(),
        id: [9; 16],
        partitions: 1,
        configs: BTreeMap::new(),
        owner: 1,
        placement: shale_meta::Placement::Owner,
        now_ms: 42,
    }
}

/// A heartbeat request frame for broker `id`, as the RPC carries it: a length prefix, then
/// the protobuf message (field 1: kind 6 = heartbeat; field 2: the JSON body).
fn heartbeat_frame(id: u64) -> Vec<u8> {
    let body = format!(r#"{{"id":{id},"epoch":1,"applied":0}}"#);
    let mut msg = vec![0x08, 6, 0x12, body.len() as u8];
    msg.extend_from_slice(body.as_bytes());
    let mut frame = (msg.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&msg);
    frame
}

/// Whether the server closes the connection (or resets it) rather than answering or
/// waiting.
async fn closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("the server neither answered nor closed"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_voters_under_mutual_tls_elect_a_leader_and_forward_writes() {
    let ca = Ca::new();
    let c = start(&ca).await;
    let leader = loop {
        if let Some(l) = c.nodes[0].leader()
            && c.nodes.iter().all(|n| n.leader() == Some(l))
        {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let follower = c.nodes.iter().find(|n| n.node_id() != leader).unwrap();
    follower.write(create_topic("orders")).await.unwrap();
    for n in &c.nodes {
        n.read_barrier().await.unwrap();
        assert!(n.read(|s| s.topics.contains_key("orders")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_certificate_from_the_cluster_ca_cannot_speak_to_the_quorum() {
    let ca = Ca::new();
    let c = start(&ca).await;
    let addr = &c.voters[&1];
    let name = rustls_pki_types::ServerName::try_from("node-1").unwrap();

    // A node's certificate: the heartbeat is answered.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut node2 = ca
        .client(&["node-2"])
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    node2.write_all(&heartbeat_frame(2)).await.unwrap();
    assert!(
        !closed(&mut node2).await,
        "a node's heartbeat gets an answer"
    );

    // Alice's certificate, from the same CA: the handshake completes (the chain is good),
    // then the server drops the connection without reading a request.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut alice = ca
        .client(&["alice"])
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    let _ = alice.write_all(&heartbeat_frame(2)).await;
    assert!(closed(&mut alice).await, "a client certificate is refused");

    // Node 2 claiming to be node 3: refused, the connection closed.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut liar = ca
        .client(&["node-2"])
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    liar.write_all(&heartbeat_frame(3)).await.unwrap();
    assert!(
        closed(&mut liar).await,
        "a heartbeat in another node's name is refused"
    );

    // Plain TCP to the TLS listener: the request is never read; a TLS alert record (type
    // 21) answers it, and the connection ends.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(&heartbeat_frame(2)).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), plain.read_to_end(&mut answer))
        .await
        .expect("the server closes a plaintext connection")
        .ok();
    assert_eq!(
        answer.first(),
        Some(&21),
        "plaintext gets a TLS alert: {answer:?}"
    );

    // A certificate naming node 2 from another CA: the server's verifier rejects the
    // chain in the handshake (the client may see that at connect or at its first read).
    let foreign = Ca::new();
    let tcp = TcpStream::connect(addr).await.unwrap();
    match foreign
        .client_trusting(&ca.pem, &["node-2"])
        .connect(name, tcp)
        .await
    {
        Err(_) => {}
        Ok(mut s) => {
            let _ = s.write_all(&heartbeat_frame(2)).await;
            assert!(
                closed(&mut s).await,
                "a foreign CA's certificate is refused"
            );
        }
    }
}
