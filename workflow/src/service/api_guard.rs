//! Who may call the API. Every request must be signed by an operator of the
//! trust file, for the verb's subject, recently (its signed time within
//! `api_skew` of ours) and only once (its signature not seen in that
//! window), and the operator's role must allow the verb. The name the trust
//! file gives the key is who acted; a request's own `by` is ignored.
//!
//! Every reply is signed by the service for the requester's inbox and bound
//! to the request's signature, so that a reply can be neither forged nor
//! replayed as the answer to another request.

use std::collections::{HashSet, VecDeque};

use protocol::sign::{self, Kind, Role};

use super::Shared;

/// At most this many request signatures are remembered; past it, new
/// requests are refused until old ones leave the window (never forgotten early).
const MAX_SEEN: usize = 100_000;

/// The requests accepted within the replay window, by what they say
/// ([`sign::message_id`]), not by their signature's spelling.
#[derive(Default)]
pub(crate) struct Seen {
    order: VecDeque<(u64, String)>,
    set: HashSet<String>,
}

impl Seen {
    /// Record `sig` (valid until `expires_ms`); false if it was already seen
    /// or the memory is full.
    fn insert(&mut self, sig: &str, now_ms: u64, expires_ms: u64) -> Result<(), &'static str> {
        while let Some((expires, _)) = self.order.front() {
            if *expires >= now_ms {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        if self.set.contains(sig) {
            return Err("replayed: this exact signed request was already handled");
        }
        if self.set.len() >= MAX_SEEN {
            return Err("too many requests in the replay window; try again shortly");
        }
        self.set.insert(sig.to_string());
        self.order.push_back((expires_ms, sig.to_string()));
        Ok(())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The trust file's name for the key that signed the request.
    pub name: String,
}

/// Why a request was refused, and its signature if it had a valid one (the
/// reply is bound to it, so the caller can trust the refusal).
pub(crate) struct Refused {
    pub reason: String,
    pub sig: String,
}

/// Authenticate a request on `subject` for `verb`; returns the caller and the
/// request's signature.
pub(crate) fn authenticate(
    shared: &Shared,
    message: &async_nats::Message,
    verb: &str,
    now_ms: u64,
) -> Result<(Caller, String), Refused> {
    let verified = sign::verify_headers(
        message.headers.as_ref(),
        Kind::ApiRequest,
        message.subject.as_str(),
        &message.payload,
    )
    .map_err(|e| Refused {
        reason: e.reason,
        sig: String::new(),
    })?;
    // Answered only into the signer's own inbox (`_INBOX_<key>.`): a reply
    // aimed anywhere else is not sent at all.
    let own_inbox = format!("{}.", protocol::subjects::inbox_prefix(&verified.key));
    if !message
        .reply
        .as_deref()
        .is_some_and(|reply| reply.starts_with(&own_inbox))
    {
        return Err(Refused {
            reason: format!(
                "the reply subject is not the signer's own inbox ({own_inbox}...); not answered"
            ),
            sig: String::new(),
        });
    }
    let refuse = |reason: String| Refused {
        reason,
        sig: verified.sig.clone(),
    };
    let Some(operator) = shared.trust.operator(&verified.key) else {
        return Err(refuse(format!(
            "key {} is not an operator of the service's trust file",
            verified.key
        )));
    };
    let at = verified
        .context
        .strip_prefix("t=")
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or_else(|| refuse("the signed context has no time (t=<unix ms>)".into()))?;
    if at < shared.started_ms {
        // The replay memory does not survive a restart: a request signed
        // before this service started may have been handled by the last one.
        return Err(refuse(format!(
            "signed at {at} (unix ms), before this service started ({}); send it again",
            shared.started_ms
        )));
    }
    let skew = shared.api_skew.as_millis() as u64;
    if at.abs_diff(now_ms) > skew {
        return Err(refuse(format!(
            "signed at {at} (unix ms), {} ms from the service's clock; allowed: {skew} ms (a replay, or a clock to fix)",
            at.abs_diff(now_ms)
        )));
    }
    shared
        .seen_requests
        .lock()
        .expect("the replay memory is never poisoned")
        .insert(
            &sign::message_id(
                Kind::ApiRequest,
                message.subject.as_str(),
                &verified.context,
                &message.payload,
            ),
            now_ms,
            at.saturating_add(skew),
        )
        .map_err(|reason| refuse(reason.to_string()))?;
    let needed = Role::needed_for(verb).unwrap_or(Role::Reader);
    if operator.role < needed {
        return Err(refuse(format!(
            "operator {} has role {}; `{verb}` needs {}",
            operator.name,
            operator.role.as_str(),
            needed.as_str()
        )));
    }
    Ok((
        Caller {
            name: operator.name.clone(),
        },
        verified.sig,
    ))
}

/// A request is answered only on a plain inbox subject: `_INBOX...`, no
/// wildcard; [`authenticate`] then requires the signer's own inbox.
pub(crate) fn check_reply_subject(message: &async_nats::Message) -> Result<(), String> {
    let Some(reply) = message.reply.as_deref() else {
        return Err("no reply subject".into());
    };
    if !reply.starts_with("_INBOX") {
        return Err(format!("{reply:?} is not an inbox (_INBOX...)"));
    }
    if reply
        .split('.')
        .any(|t| t.is_empty() || t == "*" || t == ">" || t.chars().any(char::is_whitespace))
    {
        return Err(format!("{reply:?} is not a plain subject"));
    }
    Ok(())
}

/// The headers of a reply to `reply_to`, bound to the request's signature.
pub(crate) fn reply_headers(
    shared: &Shared,
    reply_to: &str,
    request_sig: &str,
    payload: &[u8],
) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    shared.identity.sign_headers(
        &mut headers,
        Kind::ApiReply,
        reply_to,
        &format!("re={request_sig}"),
        payload,
    );
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_accepted_once_within_its_window_and_forgotten_after() {
        let mut seen = Seen::default();
        assert!(seen.insert("a", 1_000, 2_000).is_ok());
        assert!(seen.insert("a", 1_500, 2_500).is_err(), "a replay");
        assert!(seen.insert("b", 1_500, 2_500).is_ok());
        // Past a's window it is forgotten (its time check refuses it by then anyway).
        assert!(seen.insert("c", 2_100, 3_000).is_ok());
        assert!(!seen.set.contains("a") && seen.set.contains("b"));
    }
}
