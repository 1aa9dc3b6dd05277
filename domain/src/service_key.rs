//! The key every layer names a deployed service by.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One service in one environment of one project: the unit a target deploys and routes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    pub project: String,
    pub environment: String,
    pub service: String,
}

impl ServiceKey {
    pub fn new(project: impl Into<String>, environment: impl Into<String>, service: impl Into<String>) -> Self {
        Self {
            project: project.into(),
            environment: environment.into(),
            service: service.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.project, self.environment, self.service)
    }
}
