//! Upstream → agent: every response matched to its command by the tracker, masked, delivered,
//! and then its command's result recorded (off the critical path).

use super::super::frame::{Frame, FrameReader};
use super::super::session::{PROTOCOL_VIOLATION, SYSTEM_ERROR};
use super::{Guard, Shared, Stop};
use crate::recorder::SessionRecorder;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tollgate_shared::event::{kind, EndReason};

pub async fn run<R, W>(
    recorder: &SessionRecorder,
    guard: &Guard<'_>,
    shared: &Shared,
    reader: &mut FrameReader<R>,
    writer: &mut W,
    mut injected: tokio::sync::mpsc::Receiver<Bytes>,
) -> Stop
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    let mut frames: Vec<Frame> = Vec::new();
    let mut finished = Vec::new();
    let mut replaced: Vec<(usize, Bytes)> = Vec::new();
    loop {
        frames.clear();
        replaced.clear();
        // The read is cancel-safe (the buffer lives in the reader), so a notice can cut in.
        tokio::select! {
            // The proxy's own messages first: a row-limited statement's answer must reach the
            // agent before anything the server says after it.
            biased;
            Some(notice) = injected.recv() => {
                if let Err(e) = writer.write_all(&notice).await {
                    return Stop::io(EndReason::ClientClosed, e);
                }
                if let Err(e) = writer.flush().await {
                    return Stop::io(EndReason::ClientClosed, e);
                }
                continue;
            }
            read = reader.read_frames(&mut frames) => match read {
                Ok(true) => {}
                Ok(false) => return Stop::closed(EndReason::UpstreamClosed),
                Err(e) => return Stop::io(EndReason::UpstreamClosed, e),
            },
        }
        {
            // Masking follows the live policy, batch by batch.
            let masker = guard.masker();
            let mut t = shared.tracker();
            for (i, frame) in frames.iter().enumerate() {
                match t.on_backend(frame, &masker, &mut finished) {
                    Ok(Some(substitute)) => replaced.push((i, substitute)),
                    Ok(None) => {}
                    Err(e) => {
                        drop(t);
                        shared.answered.notify_waiters();
                        return Stop::refuse(
                            EndReason::ProtocolViolation,
                            PROTOCOL_VIOLATION,
                            format!("tollgate: {e}"),
                        );
                    }
                }
            }
        }
        // The agent side may be waiting for the server to confirm names.
        shared.answered.notify_waiters();
        // Overlapped recording: nothing the upstream answered reaches the agent before the
        // events of the commands sent ahead of it are stored.
        let unacked = std::mem::take(&mut *shared.unacked());
        for stored in unacked {
            if let Err(e) = stored.wait().await {
                tracing::warn!(session = %recorder.session(), error = %e, "command not recorded; its response is withheld");
                return Stop::refuse(
                    EndReason::RecordingFailed,
                    SYSTEM_ERROR,
                    "tollgate: the statement's record could not be stored (audit stream unavailable); its result is \
                     withheld and the session ends"
                        .into(),
                );
            }
        }
        // Masked messages, and the denial in place of the upstream's answer to a stand-in.
        for (i, frame) in frames.iter().enumerate() {
            let bytes = match replaced.iter().find(|(at, _)| *at == i) {
                Some((_, substitute)) => substitute,
                None => &frame.bytes,
            };
            if let Err(e) = writer.write_all(bytes).await {
                return Stop::io(EndReason::ClientClosed, e);
            }
        }
        if let Err(e) = writer.flush().await {
            return Stop::io(EndReason::ClientClosed, e);
        }
        // Results are recorded after the agent has them: off the critical path.
        // (A stand-in bound to no command answers for one whose result the frontend records.)
        for result in finished.drain(..).filter(|r| !r.command_id.is_nil()) {
            match recorder.seal(kind::COMMAND_RESULT, &result) {
                Ok(event) => recorder.background(event),
                Err(e) => tracing::error!(error = %e, "cannot seal command.result"),
            }
        }
    }
}
