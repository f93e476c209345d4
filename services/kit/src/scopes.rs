//! Which API key scope a gRPC method needs.
//!
//! A tenant API key carries scopes such as `render:write` instead of a person's role. The
//! resource follows from the method's service, the access from its verb: reading verbs need
//! `:read` (which `:write` includes), everything else `:write`. Methods outside these resources
//! (MFA, API keys themselves, signing keys, billing, notifications, the agent protocol) are
//! closed to keys.

/// Verbs that only read.
const READ_VERBS: [&str; 9] =
    ["Get", "List", "Watch", "Search", "Download", "Query", "Inspect", "Validate", "BatchGet"];

/// Methods every key may call whatever its scopes.
const OPEN_TO_KEYS: [&str; 1] = ["/flatrender.identity.v1.AuthService/GetMe"];

/// The resource of a gRPC service (`flatrender.render.v1.RenderService`), if keys may use it.
fn resource(service: &str) -> Option<&'static str> {
    let package = service.rsplit_once('.').map_or(service, |(package, _)| package);
    match package {
        "flatrender.content.v1" => Some("content"),
        "flatrender.studio.v1" => Some("projects"),
        "flatrender.render.v1" => Some("render"),
        "flatrender.file.v1" => Some("files"),
        "flatrender.identity.v1" => match service.rsplit('.').next() {
            Some("UserService") => Some("users"),
            Some("TenantService" | "WebhookService" | "UsageService") => Some("tenant"),
            _ => None,
        },
        _ => None,
    }
}

/// The scope the method at `path` (`/package.Service/Method`) needs, or `None` when no key may
/// call it.
pub fn required(path: &str) -> Option<String> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let resource = resource(service)?;
    let access = if READ_VERBS.iter().any(|verb| method.starts_with(verb)) { "read" } else { "write" };
    Some(format!("{resource}:{access}"))
}

/// `Ok` when `scopes` allow the method at `path`; otherwise why not.
pub fn check(path: &str, scopes: &[String]) -> Result<(), String> {
    if OPEN_TO_KEYS.contains(&path) {
        return Ok(());
    }
    let Some(needed) = required(path) else {
        return Err(format!("API keys cannot call {path}"));
    };
    let write = needed.replace(":read", ":write");
    if scopes.iter().any(|s| *s == needed || *s == write) {
        Ok(())
    } else {
        Err(format!("this API key lacks the {needed} scope"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_map_to_scopes() {
        assert_eq!(required("/flatrender.render.v1.RenderService/SubmitRender").as_deref(), Some("render:write"));
        assert_eq!(required("/flatrender.render.v1.RenderService/WatchRender").as_deref(), Some("render:read"));
        assert_eq!(required("/flatrender.file.v1.FileService/DownloadFile").as_deref(), Some("files:read"));
        assert_eq!(required("/flatrender.studio.v1.ProjectService/ListProjects").as_deref(), Some("projects:read"));
        assert_eq!(required("/flatrender.identity.v1.UserService/SuspendUser").as_deref(), Some("users:write"));
        assert_eq!(required("/flatrender.identity.v1.WebhookService/ListWebhooks").as_deref(), Some("tenant:read"));
        assert_eq!(required("/flatrender.identity.v1.ApiKeyService/CreateApiKey"), None);
        assert_eq!(required("/flatrender.identity.v1.MfaService/EnrollTotp"), None);
        assert_eq!(required("/flatrender.agent.v1.AgentService/Session"), None);
        assert_eq!(required("garbage"), None);
    }

    #[test]
    fn write_includes_read_and_scopes_are_exact() {
        let scopes = vec!["render:write".to_owned(), "files:read".to_owned()];
        assert!(check("/flatrender.render.v1.RenderService/GetRender", &scopes).is_ok());
        assert!(check("/flatrender.render.v1.RenderService/CancelRender", &scopes).is_ok());
        assert!(check("/flatrender.file.v1.FileService/GetFile", &scopes).is_ok());
        assert!(check("/flatrender.file.v1.FileService/DeleteFile", &scopes).is_err());
        assert!(check("/flatrender.content.v1.TemplateService/ListTemplates", &scopes).is_err());
        assert!(check("/flatrender.identity.v1.AuthService/GetMe", &[]).is_ok());
        assert_eq!(
            check("/flatrender.identity.v1.MfaService/EnrollTotp", &scopes),
            Err("API keys cannot call /flatrender.identity.v1.MfaService/EnrollTotp".into())
        );
    }
}
