//! Broadcast specs, views, locks and plans.

use std::time::Duration;

use super::{in_field, invalid, millis, required, task_id};
use crate::broadcast::{
    BroadcastLock, BroadcastPage, BroadcastPlan, BroadcastQuery, BroadcastSpec, BroadcastView,
    PlannedTarget, Source, Strategy, TargetFilter, TargetState, TargetView, ORIGIN,
};
use crate::error::ApiError;
use crate::failure::TaskError;
use crate::ids::{GroupName, PodId};
use crate::proto;
use crate::task::Limits;
use crate::time::Timestamp;

use proto::broadcast_strategy::Kind;

#[doc(hidden)]
impl From<Strategy> for proto::BroadcastStrategy {
    fn from(s: Strategy) -> Self {
        let kind = match s {
            Strategy::Pull { per_source } => Kind::PullPerSource(per_source),
            Strategy::Tree { branches } => Kind::TreeBranches(branches),
        };
        proto::BroadcastStrategy { kind: Some(kind) }
    }
}

fn strategy(field: &str, s: Option<proto::BroadcastStrategy>) -> Result<Strategy, ApiError> {
    match required(field, s)?.kind {
        Some(Kind::PullPerSource(per_source)) => Ok(Strategy::Pull { per_source }),
        Some(Kind::TreeBranches(branches)) => Ok(Strategy::Tree { branches }),
        None => Err(invalid(format!("{field}: pull or tree is required"))),
    }
}

#[doc(hidden)]
impl From<Source> for String {
    fn from(s: Source) -> String {
        s.to_string()
    }
}

fn source(field: &str, text: &str) -> Result<Source, ApiError> {
    if text == ORIGIN {
        return Ok(Source::Origin);
    }
    PodId::new(text).map(Source::Pod).map_err(in_field(field))
}

#[doc(hidden)]
impl From<BroadcastSpec> for proto::BroadcastSpec {
    fn from(s: BroadcastSpec) -> Self {
        proto::BroadcastSpec {
            app: s.app,
            version: s.version,
            group: s.group.to_string(),
            filter: Some(proto::TargetFilter {
                labels: s.filter.labels.into_iter().collect(),
                name_pattern: s.filter.name_pattern,
            }),
            handler: s.handler,
            payload: s.payload,
            strategy: Some(s.strategy.into()),
            origin_address: s.origin_address,
            retry: s.retry.map(Into::into),
            limits: Some(s.limits.into()),
            sandbox: s.sandbox,
            lock_ttl_ms: millis(s.lock_ttl),
            hosts: s.hosts,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::BroadcastSpec> for BroadcastSpec {
    type Error = ApiError;

    fn try_from(s: proto::BroadcastSpec) -> Result<Self, ApiError> {
        let group = GroupName::new(&s.group).map_err(in_field("spec.group"))?;
        let mut spec = BroadcastSpec::new(s.app, group, s.handler)
            .with_payload(s.payload)
            .with_strategy(strategy("spec.strategy", s.strategy)?)
            .with_origin_address(s.origin_address);
        if let Some(filter) = s.filter {
            spec = spec.with_filter(TargetFilter {
                labels: filter.labels.into_iter().collect(),
                name_pattern: filter.name_pattern,
            });
        }
        spec.version = s.version;
        spec.retry = s.retry.map(Into::into);
        spec.limits = s.limits.map(Limits::from).unwrap_or_default();
        spec.sandbox = s.sandbox;
        spec.hosts = s.hosts;
        if s.lock_ttl_ms > 0 {
            spec.lock_ttl = Duration::from_millis(s.lock_ttl_ms);
        }
        spec.validate().map_err(in_field("spec"))?;
        Ok(spec)
    }
}

#[doc(hidden)]
impl From<TargetState> for proto::TargetState {
    fn from(s: TargetState) -> Self {
        match s {
            TargetState::Waiting => proto::TargetState::Waiting,
            TargetState::Running => proto::TargetState::Running,
            TargetState::Done => proto::TargetState::Done,
            TargetState::Failed => proto::TargetState::Failed,
            TargetState::AlreadyApplied => proto::TargetState::AlreadyApplied,
            TargetState::Cancelled => proto::TargetState::Cancelled,
        }
    }
}

fn target_state(raw: i32) -> Result<TargetState, ApiError> {
    match proto::TargetState::try_from(raw) {
        Ok(proto::TargetState::Waiting) => Ok(TargetState::Waiting),
        Ok(proto::TargetState::Running) => Ok(TargetState::Running),
        Ok(proto::TargetState::Done) => Ok(TargetState::Done),
        Ok(proto::TargetState::Failed) => Ok(TargetState::Failed),
        Ok(proto::TargetState::AlreadyApplied) => Ok(TargetState::AlreadyApplied),
        Ok(proto::TargetState::Cancelled) => Ok(TargetState::Cancelled),
        _ => Err(invalid(format!("target.state: unknown state {raw}"))),
    }
}

#[doc(hidden)]
impl From<BroadcastView> for proto::BroadcastView {
    fn from(v: BroadcastView) -> Self {
        proto::BroadcastView {
            id: v.id,
            app: v.app,
            version: v.version,
            group: v.group.to_string(),
            strategy: Some(v.strategy.into()),
            fired_at_ms: v.fired_at.0,
            finished_at_ms: v.finished_at.map(|t| t.0),
            aborted: v.aborted,
            targets: v
                .targets
                .into_iter()
                .map(|t| proto::TargetView {
                    pod: t.pod.to_string(),
                    task: t.task.map(|id| id.to_string()),
                    state: proto::TargetState::from(t.state).into(),
                    source: t.source.map(Into::into),
                    attempts: t.attempts,
                    started_at_ms: t.started_at.map(|t| t.0),
                    finished_at_ms: t.finished_at.map(|t| t.0),
                    error: t.error.map(Into::into),
                    version: t.version,
                })
                .collect(),
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::BroadcastView> for BroadcastView {
    type Error = ApiError;

    fn try_from(v: proto::BroadcastView) -> Result<Self, ApiError> {
        let targets = v
            .targets
            .into_iter()
            .map(|t| {
                Ok(TargetView {
                    pod: PodId::new(&t.pod).map_err(in_field("target.pod"))?,
                    task: t.task.map(|id| task_id("target.task", &id)).transpose()?,
                    state: target_state(t.state)?,
                    source: t.source.map(|s| source("target.source", &s)).transpose()?,
                    attempts: t.attempts,
                    started_at: t.started_at_ms.map(Timestamp),
                    finished_at: t.finished_at_ms.map(Timestamp),
                    error: t.error.map(TaskError::try_from).transpose()?,
                    version: t.version,
                })
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(BroadcastView {
            id: v.id,
            app: v.app,
            version: v.version,
            group: GroupName::new(&v.group).map_err(in_field("broadcast.group"))?,
            strategy: strategy("broadcast.strategy", v.strategy)?,
            fired_at: Timestamp(v.fired_at_ms),
            finished_at: v.finished_at_ms.map(Timestamp),
            aborted: v.aborted,
            targets,
        })
    }
}

#[doc(hidden)]
impl From<BroadcastLock> for proto::BroadcastLock {
    fn from(l: BroadcastLock) -> Self {
        proto::BroadcastLock {
            app: l.app,
            broadcast: l.broadcast,
            version: l.version,
            since_ms: l.since.0,
            expires_at_ms: l.expires_at.0,
        }
    }
}

#[doc(hidden)]
impl From<proto::BroadcastLock> for BroadcastLock {
    fn from(l: proto::BroadcastLock) -> Self {
        BroadcastLock {
            app: l.app,
            broadcast: l.broadcast,
            version: l.version,
            since: Timestamp(l.since_ms),
            expires_at: Timestamp(l.expires_at_ms),
        }
    }
}

#[doc(hidden)]
impl From<BroadcastPlan> for proto::BroadcastPlan {
    fn from(p: BroadcastPlan) -> Self {
        proto::BroadcastPlan {
            app: p.app,
            version: p.version,
            strategy: Some(p.strategy.into()),
            targets: p
                .targets
                .into_iter()
                .map(|t| proto::PlannedTarget {
                    pod: t.pod.to_string(),
                    wave: t.wave,
                    source: t.source.into(),
                })
                .collect(),
            already_applied: p
                .already_applied
                .into_iter()
                .map(|p| p.to_string())
                .collect(),
            waves: p.waves,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::BroadcastPlan> for BroadcastPlan {
    type Error = ApiError;

    fn try_from(p: proto::BroadcastPlan) -> Result<Self, ApiError> {
        let targets = p
            .targets
            .into_iter()
            .map(|t| {
                Ok(PlannedTarget {
                    pod: PodId::new(&t.pod).map_err(in_field("plan.pod"))?,
                    wave: t.wave,
                    source: source("plan.source", &t.source)?,
                })
            })
            .collect::<Result<_, ApiError>>()?;
        let already_applied = p
            .already_applied
            .iter()
            .map(|p| PodId::new(p).map_err(in_field("plan.already_applied")))
            .collect::<Result<_, ApiError>>()?;
        Ok(BroadcastPlan {
            app: p.app,
            version: p.version,
            strategy: strategy("plan.strategy", p.strategy)?,
            targets,
            already_applied,
            waves: p.waves,
        })
    }
}

#[doc(hidden)]
impl From<BroadcastQuery> for proto::ListBroadcastsRequest {
    fn from(q: BroadcastQuery) -> Self {
        proto::ListBroadcastsRequest {
            after: q.after,
            limit: u32::try_from(q.limit).unwrap_or(u32::MAX),
            app: q.app,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::ListBroadcastsRequest> for BroadcastQuery {
    type Error = ApiError;

    fn try_from(r: proto::ListBroadcastsRequest) -> Result<Self, ApiError> {
        let query = BroadcastQuery {
            app: r.app,
            after: r.after,
            limit: if r.limit == 0 {
                BroadcastQuery::default().limit
            } else {
                usize::try_from(r.limit).unwrap_or(usize::MAX)
            },
        };
        query.validate()?;
        Ok(query)
    }
}

#[doc(hidden)]
impl From<BroadcastPage> for proto::ListBroadcastsResponse {
    fn from(p: BroadcastPage) -> Self {
        proto::ListBroadcastsResponse {
            broadcasts: p.broadcasts.into_iter().map(Into::into).collect(),
            next: p.next,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::ListBroadcastsResponse> for BroadcastPage {
    type Error = ApiError;

    fn try_from(r: proto::ListBroadcastsResponse) -> Result<Self, ApiError> {
        let broadcasts = r
            .broadcasts
            .into_iter()
            .map(TryInto::try_into)
            .collect::<Result<_, _>>()?;
        Ok(BroadcastPage::new(broadcasts, r.next))
    }
}
