//! A connection an agent forwards through the host (`ssh -L`): judged against the resource's
//! allowed destinations (none unless the policy names them), recorded (durable) before the
//! host opens it, its bytes counted each way and recorded when it closes. What it carries is
//! another protocol's business: it is not inspected or masked, which is why it must be allowed
//! by name.

use super::server::Opened;
use super::SshContext;
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tollgate_shared::event::{kind, Classification, Command, CommandResult, Decision, Forwarded, Outcome, Protocol};
use tollgate_shared::policy::{Access, Denial};

/// Where the agent asks to go, and from where.
pub struct Destination {
    pub host: String,
    pub port: u32,
    pub originator: String,
    pub originator_port: u32,
}

pub async fn serve(
    ctx: Arc<SshContext>,
    opened: Arc<Opened>,
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    to: Destination,
) {
    opened.commands.fetch_add(1, Ordering::Relaxed);
    let recorder = &opened.recorder;
    let policy = ctx.services.policy.borrow().clone();
    let resource = policy.as_ref().and_then(|p| p.document.resource(&opened.resource.name));
    let denial = match (&policy, resource) {
        (None, _) => Some(Denial { rule: "no_policy".into(), reason: "no policy is loaded".into() }),
        (Some(_), None) => {
            Some(Denial { rule: "resource_not_in_policy".into(), reason: "the resource left the policy".into() })
        }
        (Some(_), Some(_)) if opened.access == Access::ReadOnly => {
            Some(Denial { rule: "read_only_grant".into(), reason: "the agent's grant is read-only".into() })
        }
        (Some(_), Some(resource)) => resource.deny_forward(&to.host, to.port),
    };
    let record = Command {
        protocol: Protocol::Forward,
        statement: masked(&policy, &opened.resource.name, &format!("forward {}:{}", to.host, to.port)),
        postgres: None,
        classification: Some(Classification {
            statements: 1,
            classes: ["forward".to_owned()].into(),
            writes: true,
            ..Default::default()
        }),
        parse_error: None,
        decision: if denial.is_some() { Decision::Deny } else { Decision::Allow },
        rule: denial.as_ref().map(|d| d.rule.clone()),
        policy_version: policy.as_ref().map(|p| p.version),
        approval_id: None,
        masked: Vec::new(),
    };
    // On record before the host opens anything.
    let recorded = match recorder.seal(kind::COMMAND, &record) {
        Ok(event) => {
            let (id, seq) = (event.id, event.seq);
            recorder.durable(vec![event]).await.map(|()| (id, seq)).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    let (command_id, command_seq) = match recorded {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "forward not recorded; refused");
            return reply.reject(ChannelOpenFailure::ResourceShortage).await;
        }
    };
    if let Some(denial) = denial {
        tracing::info!(session = %recorder.session(), rule = %denial.rule, "forward refused");
        return reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
    }
    let Ok(host) = &opened.host else { return reply.reject(ChannelOpenFailure::ConnectFailed).await };
    let started = Instant::now();
    let opening = host.channel_open_direct_tcpip(to.host.clone(), to.port, to.originator, to.originator_port);
    let (outcome, forwarded) = match opening.await {
        Ok(upstream) => {
            reply.accept().await;
            (Outcome::Ok, Some(pump(channel, upstream).await))
        }
        Err(e) => {
            tracing::info!(session = %recorder.session(), error = %e, "the host could not open the forward");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            (Outcome::Error, None)
        }
    };
    let result = CommandResult {
        command_id,
        command_seq,
        outcome,
        tags: Vec::new(),
        rows: 0,
        duration_us: started.elapsed().as_micros() as u64,
        error: None,
        masked: Vec::new(),
        nulled: 0,
        exec: None,
        forwarded,
        file: None,
    };
    match recorder.seal(kind::COMMAND_RESULT, &result) {
        Ok(event) => recorder.background(event),
        Err(e) => tracing::error!(error = %e, "cannot seal a forward's result"),
    }
}

/// Agent-given text as the record holds it: masked with the resource's masking.
pub fn masked(policy: &Option<Arc<tollgate_shared::policy::Snapshot>>, resource: &str, text: &str) -> String {
    let masker = crate::policy::masker(policy.as_deref(), resource);
    masker.mask_str(text, None, &mut tollgate_shared::mask::Tally::default()).into_owned()
}

/// Bytes both ways until either end closes; the two directions run apart.
async fn pump(agent: Channel<Msg>, host: Channel<russh::client::Msg>) -> Forwarded {
    let (mut from_agent, to_agent) = agent.split();
    let (mut from_host, to_host) = host.split();
    // Counted as they pass, so a direction cut off at the end keeps its count.
    let (up_bytes, down_bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let up = copy(&mut from_agent, &to_host, &up_bytes);
    let down = copy(&mut from_host, &to_agent, &down_bytes);
    tokio::pin!(up, down);
    // Whichever end closes first closes the other, which gets a moment to finish.
    let grace = std::time::Duration::from_secs(5);
    tokio::select! {
        () = &mut up => {
            let _ = to_host.close().await;
            let _ = tokio::time::timeout(grace, &mut down).await;
        }
        () = &mut down => {
            let _ = to_agent.close().await;
            let _ = tokio::time::timeout(grace, &mut up).await;
        }
    }
    let _ = to_agent.close().await;
    let _ = to_host.close().await;
    Forwarded { to_destination: up_bytes.load(Ordering::Relaxed), to_agent: down_bytes.load(Ordering::Relaxed) }
}

/// One direction: data (counted into `bytes`) and EOF, until the sender closes.
async fn copy<S>(from: &mut russh::ChannelReadHalf, to: &russh::ChannelWriteHalf<S>, bytes: &AtomicU64)
where
    S: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    while let Some(message) = from.wait().await {
        match message {
            ChannelMsg::Data { data } => {
                bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                if to.data_bytes(data).await.is_err() {
                    break;
                }
            }
            ChannelMsg::Eof => {
                let _ = to.eof().await;
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
}
