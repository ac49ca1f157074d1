//! Record, then forward: what one pass of the agent-to-upstream loop has gathered and not yet
//! sent. Command events are made durable first (the rule that matters most: no command reaches
//! the upstream before its event is stored), then the tracker learns what the upstream will
//! owe, then the frames go. With overlapped recording the store is submitted and the frames go
//! at once; the backend holds every response until the stores submitted before it are done.

use super::tracker::{Expect, Item};
use super::{Shared, Stop};
use crate::recorder::SessionRecorder;
use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tollgate_shared::event::{kind, Command, EndReason, SealedEvent};

#[derive(Default)]
pub struct Outbox {
    events: Vec<SealedEvent>,
    pub expected: Vec<Item>,
    pub frames: Vec<Bytes>,
}

impl Outbox {
    pub async fn flush<W: AsyncWrite + Unpin>(
        &mut self,
        recorder: &SessionRecorder,
        shared: &Shared,
        writer: &mut BufWriter<W>,
    ) -> Result<(), Stop> {
        if !self.events.is_empty() && shared.overlapped {
            // Registered before the frames go, so the backend cannot see their answers first.
            let stored = recorder.submit(std::mem::take(&mut self.events));
            shared.unacked().push(stored);
        } else if !self.events.is_empty() {
            if let Err(e) = recorder.durable(std::mem::take(&mut self.events)).await {
                tracing::warn!(session = %recorder.session(), error = %e, "command not recorded; closing the session without running it");
                return Err(Stop::refuse(
                    EndReason::RecordingFailed,
                    super::SYSTEM_ERROR,
                    "tollgate: statement refused: it could not be recorded (audit stream unavailable); nothing was executed".into(),
                ));
            }
            self.events.clear();
        }
        shared.tracker().expect(self.expected.drain(..));
        for bytes in self.frames.drain(..) {
            if let Err(e) = writer.write_all(&bytes).await {
                return Err(Stop::io(EndReason::UpstreamClosed, e));
            }
        }
        writer.flush().await.map_err(|e| Stop::io(EndReason::UpstreamClosed, e))
    }

    /// Seal a command and bind it to the `Exec` just queued for it.
    pub fn record(&mut self, recorder: &SessionRecorder, command: &Command) -> Result<(), Stop> {
        let event = self.seal(recorder, kind::COMMAND, command)?;
        let last_exec = self.expected.iter_mut().rev().find_map(|item| match &mut item.expect {
            Expect::Exec(pending) => Some(pending),
            _ => None,
        });
        if let Some(pending) = last_exec {
            pending.bind(event.id, event.seq);
        }
        Ok(())
    }

    /// Seal an event to publish with this pass.
    pub fn seal<P: serde::Serialize>(
        &mut self,
        recorder: &SessionRecorder,
        kind: &'static str,
        payload: &P,
    ) -> Result<SealedEvent, Stop> {
        let event = recorder
            .seal(kind, payload)
            .map_err(|e| Stop::refuse(EndReason::RecordingFailed, super::SYSTEM_ERROR, format!("tollgate: {e}")))?;
        self.events.push(event.clone());
        Ok(event)
    }
}
