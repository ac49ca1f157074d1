//! A proxy that shuts down ends its sessions on the record.

use tollgate_tests::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_records_the_end_of_every_session() {
    let stack = Stack::start().await;
    let proxy = tollgate_data_plane::Proxy::start(stack.proxy_config("proxy-going-away")).await.expect("proxy");
    let port = proxy.postgres_addr.port();
    let token = stack.agent_token("bot-shutdown");
    let dsn = format!("host=127.0.0.1 port={port} dbname=demo user=ci password={token}");
    let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.expect("connect");
    let connection = tokio::spawn(connection);
    client.simple_query("select 'before shutdown'").await.expect("query");

    proxy.shutdown(std::time::Duration::from_secs(5)).await;
    // The agent was told why the connection ended.
    let ended = connection.await.expect("join");
    let err = ended.expect_err("the connection ended with an error");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("57P01"), "{err}");
    assert!(client.simple_query("select 1").await.is_err());
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "the listener is closed");

    let sessions = stack.ended_sessions(1).await;
    assert_eq!(sessions[0]["end_reason"], "shutdown");
    let id = sessions[0]["id"].as_str().expect("id");
    let (_, verify) = stack.api(&format!("/api/v1/sessions/{id}/verify")).await;
    assert_eq!(verify["complete"], true, "{verify}");
}
