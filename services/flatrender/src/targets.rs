//! Which services run in this process, and building them.

use std::collections::BTreeSet;
use std::fmt;

use flatrender_gateway::Upstream;
use flatrender_kit::db::{self, PoolSettings, ServiceRole};
use flatrender_kit::metrics::Metrics;
use flatrender_kit::server::{Application, ServiceContext};
use flatrender_kit::shutdown::Shutdown;
use flatrender_kit::{Error, Result};
use tonic::service::RoutesBuilder;

use crate::cli::{ServiceDatabaseArgs, Target};

/// The settings of the services that have their own.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// The identity service's.
    pub identity: flatrender_identity::Settings,
    /// The file service's.
    pub file: flatrender_file::Settings,
    /// The render orchestrator's.
    pub render: flatrender_render::Settings,
}

/// What [`Selection::build`] made.
pub struct Built {
    /// Everything the server runs.
    pub app: Application,
    /// The identity service's state, when it runs in this process.
    pub identity: Option<flatrender_identity::Identity>,
}

/// The services of every target but `gateway`, in start order.
const SERVICES: [Target; 6] =
    [Target::Identity, Target::Content, Target::Studio, Target::Render, Target::File, Target::Notification];

/// The expanded, de-duplicated target list.
#[derive(Clone, Debug)]
pub struct Selection {
    targets: BTreeSet<Target>,
}

impl Selection {
    /// Expands `all` and removes duplicates.
    pub fn new(requested: &[Target]) -> Self {
        let mut targets = BTreeSet::new();
        for target in requested {
            if *target == Target::All {
                targets.extend(SERVICES);
                targets.insert(Target::Gateway);
            } else {
                targets.insert(*target);
            }
        }
        Self { targets }
    }

    /// Builds every selected service on its own pool and adds its gRPC services to the routes.
    pub fn build(
        &self,
        settings: &PoolSettings,
        own_urls: &ServiceDatabaseArgs,
        upstreams: &[Upstream],
        services: &ServiceSettings,
        shutdown: &Shutdown,
        metrics: &Metrics,
    ) -> Result<Built> {
        let mut routes = RoutesBuilder::default();
        let mut modules = Vec::new();
        let mut identity = None;
        for target in self.services() {
            let Some(role) = role_of(target) else { continue };
            let own_url = own_urls.url_of(role);
            let ctx = ServiceContext {
                pool: db::service_pool(settings, role, own_url)?,
                shutdown: shutdown.stop_signal(),
                metrics: metrics.clone(),
            };
            let module = match target {
                Target::Identity => {
                    let (module, state) =
                        flatrender_identity::module_with_state(ctx, services.identity.clone(), &mut routes)?;
                    identity = Some(state);
                    module
                }
                Target::Content => flatrender_content::module(ctx, &mut routes),
                Target::Studio => flatrender_studio::module(ctx, &mut routes),
                Target::Render => flatrender_render::module(ctx, services.render.clone(), &mut routes),
                Target::File => flatrender_file::module(ctx, services.file.clone(), &mut routes)?,
                Target::Notification => flatrender_notification::module(ctx, &mut routes),
                Target::All | Target::Gateway => continue,
            };
            modules.push(module);
        }
        let mut forwarded = Vec::new();
        if self.targets.contains(&Target::Gateway) {
            let local: BTreeSet<&str> = modules.iter().map(|m| m.role.service).collect();
            let (with_proxies, names) = flatrender_gateway::add_proxy_routes(routes.routes(), &local, upstreams)
                .map_err(|e| Error::Config(e.to_string()))?;
            if !names.is_empty() {
                tracing::info!(services = names.len(), "gateway forwards the services of other processes");
            }
            routes = RoutesBuilder::from(with_proxies);
            forwarded = names;
        }
        Ok(Built { app: Application { routes, modules, forwarded }, identity })
    }

    /// Whether the gateway runs in this process.
    pub fn has_gateway(&self) -> bool {
        self.targets.contains(&Target::Gateway)
    }

    /// The database roles of the selected services.
    pub fn roles(&self) -> impl Iterator<Item = ServiceRole> + '_ {
        self.services().filter_map(role_of)
    }

    /// The selected services (every target but the gateway), in start order.
    pub fn services(&self) -> impl Iterator<Item = Target> + '_ {
        SERVICES.into_iter().filter(|t| self.targets.contains(t))
    }
}

/// The database identity of a service target; `None` for `all` and `gateway`.
fn role_of(target: Target) -> Option<ServiceRole> {
    Some(match target {
        Target::Identity => ServiceRole::IDENTITY,
        Target::Content => ServiceRole::CONTENT,
        Target::Studio => ServiceRole::STUDIO,
        Target::Render => ServiceRole::RENDER,
        Target::File => ServiceRole::FILE,
        Target::Notification => ServiceRole::NOTIFICATION,
        Target::All | Target::Gateway => return None,
    })
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.targets.iter().map(|t| format!("{t:?}").to_lowercase()).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_expands_to_every_service_and_the_gateway() {
        let s = Selection::new(&[Target::All, Target::Render]);
        assert_eq!(s.to_string(), "identity,content,studio,render,file,notification,gateway");
    }

    #[test]
    fn lists_are_deduplicated() {
        assert_eq!(Selection::new(&[Target::Render, Target::Render, Target::File]).to_string(), "render,file");
    }
}
