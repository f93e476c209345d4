//! Webhook bodies: an outbox event as `flatrender.events.v1.EventEnvelope` in proto3 JSON, its
//! payload an `Any` with `@type`, through the descriptors compiled into flatrender-proto.

use std::sync::Arc;

use flatrender_kit::outbox::Event;
use flatrender_proto::flatrender::events::v1 as events;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

use super::SECRET_EVENTS;

/// The envelope's descriptor and the event types webhooks may carry.
#[derive(Clone, Debug)]
pub struct Envelopes {
    envelope: MessageDescriptor,
    types: Arc<Vec<(String, String)>>,
}

impl Envelopes {
    /// Reads the compiled descriptors (a build defect if they are unreadable).
    pub fn new() -> Result<Self, String> {
        let pool = DescriptorPool::decode(flatrender_proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())?;
        let envelope = pool
            .get_message_by_name("flatrender.events.v1.EventEnvelope")
            .ok_or("the descriptors lack flatrender.events.v1.EventEnvelope")?;
        let mut types: Vec<(String, String)> = pool
            .all_messages()
            .filter(|m| m.package_name() == "flatrender.events.v1" && m.parent_message().is_none())
            .filter(|m| m.full_name() != "flatrender.events.v1.EventEnvelope")
            .filter(|m| !SECRET_EVENTS.contains(&m.full_name()))
            .map(|m| (m.full_name().to_owned(), comment_of(&m)))
            .collect();
        types.sort();
        Ok(Self { envelope, types: Arc::new(types) })
    }

    /// Every type a webhook may subscribe to, with its description, by name.
    pub fn types(&self) -> &[(String, String)] {
        &self.types
    }

    /// Whether `event_type` may be delivered.
    pub fn deliverable(&self, event_type: &str) -> bool {
        self.types.iter().any(|(name, _)| name == event_type)
    }

    /// The JSON body for `event`.
    pub fn body(&self, event: &Event) -> Result<Vec<u8>, String> {
        let occurred_at = event.created_at;
        let envelope = events::EventEnvelope {
            id: u64::try_from(event.id).unwrap_or(0),
            event_type: event.event_type.clone(),
            tenant_id: event.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: occurred_at.unix_timestamp(),
                nanos: i32::try_from(occurred_at.nanosecond()).unwrap_or(0),
            }),
            source: event.source.clone(),
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            payload: Some(prost_types::Any {
                type_url: format!("type.googleapis.com/{}", event.event_type),
                value: event.payload.clone(),
            }),
        };
        self.json(&envelope)
    }

    /// The JSON of a test event (type `flatrender.webhook.test`, id 0).
    pub fn test_body(&self, tenant: uuid::Uuid) -> Result<Vec<u8>, String> {
        let now = time::OffsetDateTime::now_utc();
        let envelope = events::EventEnvelope {
            id: 0,
            event_type: "flatrender.webhook.test".into(),
            tenant_id: tenant.to_string(),
            occurred_at: Some(prost_types::Timestamp { seconds: now.unix_timestamp(), nanos: 0 }),
            source: "identity".into(),
            aggregate_type: "webhook".into(),
            aggregate_id: String::new(),
            payload: None,
        };
        self.json(&envelope)
    }

    fn json(&self, envelope: &events::EventEnvelope) -> Result<Vec<u8>, String> {
        let message = DynamicMessage::decode(self.envelope.clone(), envelope.encode_to_vec().as_slice())
            .map_err(|e| e.to_string())?;
        serde_json::to_vec(&message).map_err(|e| e.to_string())
    }
}

/// The leading comment of a message in its proto file, as one line.
fn comment_of(message: &MessageDescriptor) -> String {
    let file = message.parent_file();
    let index = message.descriptor_proto();
    let Some(position) = file.file_descriptor_proto().message_type.iter().position(|m| m == index) else {
        return String::new();
    };
    let path = [4, i32::try_from(position).unwrap_or(-1)];
    file.file_descriptor_proto()
        .source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|l| l.path == path))
        .and_then(|l| l.leading_comments.as_deref())
        .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn events_become_proto3_json_with_a_typed_payload() {
        let envelopes = Envelopes::new().unwrap();
        assert!(envelopes.deliverable("flatrender.events.v1.UserRegistered"));
        assert!(!envelopes.deliverable("flatrender.events.v1.PasswordResetRequested"), "secrets are never sent");
        assert!(!envelopes.deliverable("flatrender.events.v1.EventEnvelope"));
        let payload = events::UserRegistered {
            tenant_id: "t".into(),
            user_id: "u".into(),
            email: "a@b.io".into(),
            ..Default::default()
        };
        let event = Event {
            id: 42,
            event_type: "flatrender.events.v1.UserRegistered".into(),
            source: "identity".into(),
            aggregate_type: "user".into(),
            aggregate_id: "u".into(),
            tenant_id: None,
            payload: payload.encode_to_vec(),
            trace_context: serde_json::json!({}),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        let body: serde_json::Value = serde_json::from_slice(&envelopes.body(&event).unwrap()).unwrap();
        assert_eq!(body["id"], "42", "uint64 is a string in proto3 JSON");
        assert_eq!(body["eventType"], "flatrender.events.v1.UserRegistered");
        assert_eq!(body["payload"]["@type"], "type.googleapis.com/flatrender.events.v1.UserRegistered");
        assert_eq!(body["payload"]["email"], "a@b.io");
        assert_eq!(body["occurredAt"], "1970-01-01T00:00:00Z");
    }
}
