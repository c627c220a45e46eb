//! The expiry timer: releases dead sessions' locks when their grace period ends, also on
//! an idle server (the original purged them only every ninth socket event).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

pub(crate) async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        // Register interest before reading the deadline, so a session dying in between
        // is not missed.
        let changed = shared.expiry_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let next = shared.with(|core, _| core.table.next_expiry());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = &mut changed => {}
            _ = shared.clock.sleep_until(next.unwrap_or(0)), if next.is_some() => {
                // `with` applies the expiry and logs what it released.
                shared.with(|core, now| core.apply(&lockd_core::Command::Expire, now));
            }
        }
    }
}
