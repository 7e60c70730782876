//! The webhooks of the `alert.webhooks` setting, and the body each kind gets.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use sitewatch_service::{ExposeSecret, SecretString};

use super::Notification;

/// The shapes of payload a webhook can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookKind {
    /// The [`Notification`] as JSON, for any receiver.
    Json,
    /// Slack's incoming webhooks (`{"text": ...}`).
    Slack,
    /// Discord's webhooks (`{"content": ...}`).
    Discord,
    /// Microsoft Teams' incoming webhooks (`{"text": ...}`).
    Teams,
}

impl WebhookKind {
    const ALL: [WebhookKind; 4] = [
        WebhookKind::Json,
        WebhookKind::Slack,
        WebhookKind::Discord,
        WebhookKind::Teams,
    ];

    /// The name in the setting and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookKind::Json => "json",
            WebhookKind::Slack => "slack",
            WebhookKind::Discord => "discord",
            WebhookKind::Teams => "teams",
        }
    }
}

/// One webhook: its kind and URL, and an id that names it without the URL.
#[derive(Clone)]
pub struct Webhook {
    kind: WebhookKind,
    url: SecretString,
    id: String,
}

impl Webhook {
    /// Parses `KIND:URL`. The error never quotes the URL: it may hold a token.
    pub fn parse(text: &str) -> Result<Webhook, String> {
        let text = text.trim();
        let kinds = || WebhookKind::ALL.map(WebhookKind::as_str).join(", ");
        let Some((kind, url)) = text.split_once(':') else {
            return Err(format!("not KIND:URL (KIND: {})", kinds()));
        };
        let Some(kind) = WebhookKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(kind.trim()))
        else {
            return Err(if kind.trim().starts_with("http") {
                format!(
                    "no KIND before the URL; write for example json:https://... (KIND: {})",
                    kinds()
                )
            } else {
                format!("unknown kind {:?} (KIND: {})", kind.trim(), kinds())
            });
        };
        let url = url.trim();
        let parsed = url::Url::parse(url)
            .map_err(|err| format!("{} URL does not parse: {err}", kind.as_str()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(format!(
                "{} URL must be http:// or https:// with a host",
                kind.as_str()
            ));
        }
        let digest = Sha256::digest(url.as_bytes());
        let id = format!(
            "{}-{}",
            kind.as_str(),
            digest[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        Ok(Webhook {
            kind,
            url: SecretString::from(url.to_owned()),
            id,
        })
    }

    /// `KIND-DIGEST`: the same for the same URL in every consumer, so rows
    /// written by one are sent by any; stored in place of the URL.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The payload shape.
    pub fn kind(&self) -> WebhookKind {
        self.kind
    }

    /// Where to send (a credential: never log it).
    pub fn url(&self) -> &str {
        self.url.expose_secret()
    }

    /// The body this webhook gets for `notification`.
    pub fn body(&self, notification: &Notification) -> serde_json::Value {
        match self.kind {
            WebhookKind::Json => serde_json::to_value(notification).unwrap_or_default(),
            WebhookKind::Slack | WebhookKind::Teams => {
                serde_json::json!({ "text": notification.summary() })
            }
            WebhookKind::Discord => serde_json::json!({ "content": notification.summary() }),
        }
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Webhook({})", self.id)
    }
}

/// The `alert.webhooks` setting, parsed: comma-separated `KIND:URL`.
#[derive(Clone, Default)]
pub struct Webhooks(Arc<[Webhook]>);

impl Webhooks {
    /// Every webhook, in the order written.
    pub fn as_slice(&self) -> &[Webhook] {
        &self.0
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for Webhooks {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut webhooks: Vec<Webhook> = Vec::new();
        for (i, part) in text.split(',').map(str::trim).enumerate() {
            if part.is_empty() {
                continue;
            }
            let webhook =
                Webhook::parse(part).map_err(|why| format!("webhook {}: {why}", i + 1))?;
            if webhooks.iter().any(|w| w.id == webhook.id) {
                return Err(format!("webhook {}: listed twice", i + 1));
            }
            webhooks.push(webhook);
        }
        Ok(Webhooks(webhooks.into()))
    }
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::alert::Status;

    const SLACK: &str = "https://hooks.slack.example/services/T000/B000/s3cr3t-token";

    #[test]
    fn webhooks_parse_and_never_show_their_urls() {
        let hooks: Webhooks = format!("slack:{SLACK}, json:http://127.0.0.1:9/hook")
            .parse()
            .expect("valid");
        assert_eq!(hooks.as_slice().len(), 2);
        assert_eq!(hooks.as_slice()[0].kind(), WebhookKind::Slack);
        assert!(hooks.as_slice()[0].id().starts_with("slack-"));
        assert_eq!(hooks.as_slice()[0].url(), SLACK);
        let shown = format!("{hooks:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let again: Webhooks = format!("slack:{SLACK}").parse().expect("valid");
        assert_eq!(
            again.as_slice()[0].id(),
            hooks.as_slice()[0].id(),
            "the id is stable"
        );
    }

    #[test]
    fn bad_webhooks_are_named_by_position_without_their_urls() {
        let err = format!("json:http://ok.example/,{SLACK}")
            .parse::<Webhooks>()
            .expect_err("no kind");
        assert!(
            err.starts_with("webhook 2: no KIND before the URL"),
            "{err}"
        );
        assert!(!err.contains("s3cr3t"), "{err}");
        let err = format!("pager:{SLACK}")
            .parse::<Webhooks>()
            .expect_err("unknown kind");
        assert!(err.contains("unknown kind \"pager\""), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
        let err = "slack:ftp://x.example/s3cr3t"
            .parse::<Webhooks>()
            .expect_err("scheme");
        assert!(
            err.contains("http:// or https://") && !err.contains("s3cr3t"),
            "{err}"
        );
        let err = format!("slack:{SLACK},slack:{SLACK}")
            .parse::<Webhooks>()
            .expect_err("twice");
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn each_kind_gets_its_shape() {
        let since = Utc::now();
        let n = Notification {
            idempotency_key: Notification::key(7, Status::Up),
            incident_id: 7,
            site: "https://shop.example/".into(),
            state: Status::Up,
            since,
            down_since: since - TimeDelta::seconds(125),
            failed_condition: "status".into(),
            failed_message: "status 503 not in 200-299".into(),
            probe_id: Uuid::now_v7(),
            status_page: Some("https://status.example/sites/3".into()),
        };
        let hook =
            |kind: &str| Webhook::parse(&format!("{kind}:https://h.example/")).expect("valid");
        let json = hook("json").body(&n);
        assert_eq!(json["idempotency_key"], "incident-7-up");
        assert_eq!(json["state"], "up");
        let slack = hook("slack").body(&n);
        let text = slack["text"].as_str().expect("text");
        assert!(
            text.starts_with("UP: https://shop.example/ again since"),
            "{text}"
        );
        assert!(
            text.contains("after 2m 5s down (status: status 503 not in 200-299)"),
            "{text}"
        );
        assert!(text.ends_with("https://status.example/sites/3"), "{text}");
        assert!(hook("discord").body(&n)["content"].is_string());
        assert!(hook("teams").body(&n)["text"].is_string());
    }
}
