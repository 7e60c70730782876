//! The notifications a batch's transitions owe, written into `alert_outbox`
//! in the batch's transaction.

use url::Url;

use super::{Notification, Status, Webhooks};
use crate::store::state::Transition;
use crate::store::StoreError;

const ENQUEUE: &str = include_str!("../../sql/enqueue_alerts.sql");

/// Which webhooks a transition notifies, and where the status page is.
#[derive(Debug, Clone)]
pub struct Outbox {
    webhooks: Webhooks,
    status_page: Option<Url>,
}

impl Outbox {
    /// An outbox for `webhooks`, linking to `status_page` when set.
    pub fn new(webhooks: Webhooks, status_page: Option<Url>) -> Outbox {
        Outbox {
            webhooks,
            status_page,
        }
    }

    /// The notification of one transition.
    pub(crate) fn notification(&self, t: &Transition) -> Notification {
        let state = if t.up { Status::Up } else { Status::Down };
        Notification {
            idempotency_key: Notification::key(t.incident_id, state),
            incident_id: t.incident_id,
            site: t.site.clone(),
            state,
            since: t.at,
            down_since: t.opened_at,
            failed_condition: t.failed_condition.clone(),
            failed_message: t.failed_message.clone(),
            probe_id: t.probe_id,
            status_page: self.status_page.as_ref().and_then(|base| {
                let path = format!("sites/{}", t.website_id);
                // A base without a trailing slash is a directory all the same.
                let mut base = base.clone();
                if !base.path().ends_with('/') {
                    base.set_path(&format!("{}/", base.path()));
                }
                base.join(&path).ok().map(String::from)
            }),
        }
    }

    /// One row per transition and webhook, in `tx`.
    pub(crate) async fn enqueue(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        transitions: &[Transition],
    ) -> Result<(), StoreError> {
        let webhooks = self.webhooks.as_slice();
        if transitions.is_empty() || webhooks.is_empty() {
            return Ok(());
        }
        let rows = transitions.len() * webhooks.len();
        let mut incident = Vec::with_capacity(rows);
        let mut website = Vec::with_capacity(rows);
        let mut transition = Vec::with_capacity(rows);
        let mut webhook = Vec::with_capacity(rows);
        let mut payload = Vec::with_capacity(rows);
        for t in transitions {
            let notification = self.notification(t);
            let json = serde_json::to_value(&notification).unwrap_or_default();
            for hook in webhooks {
                incident.push(t.incident_id);
                website.push(t.website_id);
                transition.push(notification.state.as_str());
                webhook.push(hook.id());
                payload.push(json.clone());
            }
        }
        let statement = tx.prepare_cached(ENQUEUE).await?;
        let _ = tx
            .execute(
                &statement,
                &[&incident, &website, &transition, &webhook, &payload],
            )
            .await?;
        Ok(())
    }
}
