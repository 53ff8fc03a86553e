//! RPC endpoints on a port range, registered under another host than the
//! one they bind (what a container with published ports needs,
//! `docs/deploy.md`): each instance takes the first free port of the
//! range, callers reach it at the advertised host, and an instance that
//! finds the range full fails with an error that names the range.

use muster::bus::BusOptions;
use muster::prelude::*;

#[tokio::test]
async fn endpoints_take_ports_of_the_range_and_are_registered_under_the_advertised_host() {
    let url = muster_test::free_bus_url();
    let _bus = muster_test::start_bus(&url).await;
    // Two free ports for the range: the two after a bus base port.
    let base = muster_test::free_port_base();
    let range: muster_zmq::PortRange = format!("{}-{}", base + 1, base + 2).parse().unwrap();
    let mut options = BusOptions::default();
    options.bind_host = Some("127.0.0.1".into());
    options.advertise_host = Some("localhost".into());
    options.rpc_ports = Some(range);

    let mut running = Vec::new();
    for _ in 0..2 {
        let transport = muster::bus::connect_with(&url, None, &options)
            .await
            .unwrap();
        let service = Service::new("ported")
            .rpc("port", || async { Ok::<_, RpcError>("here") })
            .start(transport)
            .await
            .unwrap();
        running.push(service);
    }
    let client = Client::connect(&url).await.unwrap();
    let instances = muster_test::eventually(
        std::time::Duration::from_secs(10),
        "two instances registered",
        || async {
            let all = client.instances().await.unwrap_or_default();
            let ported: Vec<_> = all.into_iter().filter(|i| i.service == "ported").collect();
            (ported.len() == 2).then_some(ported)
        },
    )
    .await;
    let mut endpoints: Vec<String> = instances.iter().map(|i| i.endpoint.clone()).collect();
    endpoints.sort();
    assert_eq!(
        endpoints,
        [
            format!("tcp://localhost:{}", base + 1),
            format!("tcp://localhost:{}", base + 2)
        ]
    );
    // Reached at the advertised host, on both instances.
    for i in &instances {
        let answer: String = client
            .call_with(
                "ported.port",
                &(),
                muster::CallOptions::default().instance(i.instance.clone()),
            )
            .await
            .unwrap();
        assert_eq!(answer, "here");
    }

    // A third finds the range full.
    let transport = muster::bus::connect_with(&url, None, &options)
        .await
        .unwrap();
    let refused = Service::new("ported")
        .rpc("port", || async { Ok::<_, RpcError>("here") })
        .start(transport)
        .await
        .unwrap_err();
    let text = refused.to_string();
    assert!(
        text.contains("no free port") && text.contains(&format!("{}", base + 2)),
        "{text}"
    );
}
