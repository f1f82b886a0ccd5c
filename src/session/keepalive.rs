//! Keep-alive (§3.1.2.10): a client silent for 1.5 x Keep Alive is disconnected
//! [MQTT-3.1.2-22].
//!
//! One timer per session, re-armed for the remaining time when it fires, instead of one timer
//! per received packet.

use std::time::Duration;

use actix::prelude::*;

use super::{Phase, Session, SessionError};

impl Session {
    pub(super) fn arm_keep_alive(&mut self, ctx: &mut Context<Self>) {
        let Some(keep_alive) = self.client.as_ref().map(|c| c.keep_alive) else {
            return;
        };
        if keep_alive == 0 {
            return;
        }
        let window = Duration::from_millis(u64::from(keep_alive) * 1500);
        ctx.run_later(window, move |act, ctx| {
            act.check_keep_alive(keep_alive, window, ctx)
        });
    }

    fn check_keep_alive(&mut self, keep_alive: u16, window: Duration, ctx: &mut Context<Self>) {
        if self.phase != Phase::Connected {
            return;
        }
        let idle = self.last_packet.elapsed();
        if idle >= window {
            self.fail(SessionError::KeepAliveTimeout(keep_alive), ctx);
        } else {
            ctx.run_later(window - idle, move |act, ctx| {
                act.check_keep_alive(keep_alive, window, ctx)
            });
        }
    }
}
