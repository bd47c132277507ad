//! Group settings and the failed queue.

use crate::admin::{
    FailedCount, FailedFilter, GroupSettings, GroupTimes, GroupView, MinuteCounts, MissedTicks,
    PendingChange, PodView, QueuePosition, RateLimit, ScheduleSpec, ScheduleView,
};
use crate::convert::required;
use crate::convert::task::error_kind_filter;
use crate::convert::{in_field, invalid, millis, task_id};
use crate::error::ApiError;
use crate::failure::ErrorKind;
use crate::ids::{GroupName, PodId, ScheduleName, TaskId};
use crate::proto;
use crate::time::Timestamp;

#[doc(hidden)]
impl From<GroupSettings> for proto::GroupSettings {
    fn from(s: GroupSettings) -> Self {
        proto::GroupSettings {
            paused: s.paused,
            max_concurrency: s.max_concurrency,
            rate_per_second: s.rate.map(|r| r.per_second),
            rate_burst: s.rate.map(|r| r.burst),
            retry: s.retry.map(Into::into),
        }
    }
}

#[doc(hidden)]
impl From<proto::GroupSettings> for GroupSettings {
    fn from(s: proto::GroupSettings) -> Self {
        // A rate without a burst allows one second's worth at once.
        let rate = s
            .rate_per_second
            .map(|r| RateLimit::new(r, s.rate_burst.unwrap_or(r)));
        GroupSettings::default()
            .with_paused(s.paused)
            .with_max_concurrency(s.max_concurrency)
            .with_rate(rate)
            .with_retry(s.retry.map(Into::into))
    }
}

#[doc(hidden)]
impl From<FailedFilter> for proto::FailedFilter {
    fn from(f: FailedFilter) -> Self {
        proto::FailedFilter {
            ids: f.ids.into_iter().map(|id| id.to_string()).collect(),
            group: f.group.map(|g| g.to_string()),
            kind: f
                .kind
                .map_or(proto::ErrorKind::Unspecified, proto::ErrorKind::from)
                as i32,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::FailedFilter> for FailedFilter {
    type Error = ApiError;

    fn try_from(f: proto::FailedFilter) -> Result<Self, ApiError> {
        if f.kind != 0 && error_kind_filter(f.kind).is_none() {
            return Err(invalid(format!(
                "filter.kind: unknown error kind {}",
                f.kind
            )));
        }
        let mut filter = FailedFilter::ids(
            f.ids
                .iter()
                .map(|id| task_id("filter.ids", id))
                .collect::<Result<_, _>>()?,
        );
        filter.group = f
            .group
            .map(|g| GroupName::new(g).map_err(in_field("filter.group")))
            .transpose()?;
        filter.kind = error_kind_filter(f.kind);
        Ok(filter)
    }
}

#[doc(hidden)]
impl From<FailedCount> for proto::FailedCount {
    fn from(c: FailedCount) -> Self {
        proto::FailedCount {
            group: c.group.to_string(),
            kind: proto::ErrorKind::from(c.kind) as i32,
            count: c.count,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::FailedCount> for FailedCount {
    type Error = ApiError;

    fn try_from(c: proto::FailedCount) -> Result<Self, ApiError> {
        Ok(FailedCount::new(
            GroupName::new(&c.group).map_err(in_field("count.group"))?,
            error_kind_filter(c.kind).unwrap_or(ErrorKind::Sandbox),
            c.count,
        ))
    }
}

/// Builds the wire request of `update_pending`.
pub fn update_pending_request(
    ids: &[TaskId],
    change: &PendingChange,
) -> proto::UpdatePendingRequest {
    proto::UpdatePendingRequest {
        ids: ids.iter().map(|id| id.to_string()).collect(),
        group: change.group.as_ref().map(|g| g.to_string()),
        priority: change.priority,
        position: match change.position {
            Some(QueuePosition::Front) => proto::QueuePosition::Front,
            Some(QueuePosition::Back) => proto::QueuePosition::Back,
            None => proto::QueuePosition::Unspecified,
        } as i32,
    }
}

/// Reads the wire request of `update_pending`.
///
/// # Errors
/// `InvalidArgument` naming the bad field.
pub fn parse_update_pending(
    r: proto::UpdatePendingRequest,
) -> Result<(Vec<TaskId>, PendingChange), ApiError> {
    let ids = r
        .ids
        .iter()
        .map(|id| task_id("ids", id))
        .collect::<Result<Vec<_>, _>>()?;
    let position = match proto::QueuePosition::try_from(r.position) {
        Ok(proto::QueuePosition::Unspecified) => None,
        Ok(proto::QueuePosition::Front) => Some(QueuePosition::Front),
        Ok(proto::QueuePosition::Back) => Some(QueuePosition::Back),
        Err(_) => return Err(invalid(format!("position: unknown value {}", r.position))),
    };
    let change = PendingChange {
        group: r
            .group
            .map(|g| GroupName::new(g).map_err(in_field("group")))
            .transpose()?,
        priority: r.priority,
        position,
    };
    Ok((ids, change))
}

#[doc(hidden)]
impl From<ScheduleSpec> for proto::ScheduleSpec {
    fn from(s: ScheduleSpec) -> Self {
        proto::ScheduleSpec {
            name: s.name.to_string(),
            cron: s.cron,
            time_zone: s.time_zone,
            task: Some(s.task.into()),
            missed: match s.missed {
                MissedTicks::RunOnce => proto::MissedTicks::RunOnce,
                _ => proto::MissedTicks::Skip,
            } as i32,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::ScheduleSpec> for ScheduleSpec {
    type Error = ApiError;

    fn try_from(s: proto::ScheduleSpec) -> Result<Self, ApiError> {
        let missed = match proto::MissedTicks::try_from(s.missed) {
            Ok(proto::MissedTicks::Skip) => MissedTicks::Skip,
            Ok(proto::MissedTicks::RunOnce) => MissedTicks::RunOnce,
            Err(_) => {
                return Err(invalid(format!(
                    "schedule.missed: unknown value {}",
                    s.missed
                )))
            }
        };
        let time_zone = if s.time_zone.is_empty() {
            "UTC".to_owned()
        } else {
            s.time_zone
        };
        Ok(ScheduleSpec::new(
            ScheduleName::new(&s.name).map_err(in_field("schedule.name"))?,
            s.cron,
            required("schedule.task", s.task)?.try_into()?,
        )
        .in_time_zone(time_zone)
        .on_missed(missed))
    }
}

#[doc(hidden)]
impl From<ScheduleView> for proto::ScheduleView {
    fn from(v: ScheduleView) -> Self {
        proto::ScheduleView {
            spec: Some(v.spec.into()),
            paused: v.paused,
            last_tick_ms: v.last_tick.map(|t| t.0),
            fired: v.fired,
            next_tick_ms: v.next_tick.map(|t| t.0),
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::ScheduleView> for ScheduleView {
    type Error = ApiError;

    fn try_from(v: proto::ScheduleView) -> Result<Self, ApiError> {
        Ok(ScheduleView::new(
            required("schedule", v.spec)?.try_into()?,
            v.paused,
            v.last_tick_ms.map(Timestamp),
            v.fired,
        )
        .with_next_tick(v.next_tick_ms.map(Timestamp)))
    }
}

#[doc(hidden)]
impl From<PodView> for proto::PodView {
    fn from(p: PodView) -> Self {
        proto::PodView {
            id: p.id.to_string(),
            groups: p.groups.iter().map(ToString::to_string).collect(),
            slots: p.slots,
            running: p.running,
            held: p.held,
            labels: p.labels.into_iter().collect(),
            address: p.address,
            cpu_permille: p.cpu_permille,
            memory_bytes: p.memory_bytes,
            connected_at_ms: p.connected_at.0,
            last_heartbeat_ms: p.last_heartbeat.0,
            draining: p.draining,
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::PodView> for PodView {
    type Error = ApiError;

    fn try_from(p: proto::PodView) -> Result<Self, ApiError> {
        let groups = p
            .groups
            .iter()
            .map(|g| GroupName::new(g).map_err(in_field("pod.groups")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut view = PodView::new(
            PodId::new(&p.id).map_err(in_field("pod.id"))?,
            groups,
            p.slots,
        );
        view.running = p.running;
        view.held = p.held;
        view.labels = p.labels.into_iter().collect();
        view.address = p.address;
        view.cpu_permille = p.cpu_permille;
        view.memory_bytes = p.memory_bytes;
        view.connected_at = Timestamp(p.connected_at_ms);
        view.last_heartbeat = Timestamp(p.last_heartbeat_ms);
        view.draining = p.draining;
        Ok(view)
    }
}

#[doc(hidden)]
impl From<GroupView> for proto::GroupView {
    fn from(g: GroupView) -> Self {
        proto::GroupView {
            group: g.group.to_string(),
            pending: g.pending,
            running: g.running,
            succeeded: g.succeeded,
            failed: g.failed,
            cancelled: g.cancelled,
            blocked: g.blocked,
            settings: Some(g.settings.into()),
            mean_run_ms: g.mean_run_time.map(millis),
            wait_p50_ms: g.times.wait_p50.map(millis),
            wait_p95_ms: g.times.wait_p95.map(millis),
            run_p50_ms: g.times.run_p50.map(millis),
            run_p95_ms: g.times.run_p95.map(millis),
        }
    }
}

#[doc(hidden)]
impl TryFrom<proto::GroupView> for GroupView {
    type Error = ApiError;

    fn try_from(g: proto::GroupView) -> Result<Self, ApiError> {
        let mut view = GroupView::new(GroupName::new(&g.group).map_err(in_field("group"))?);
        view.pending = g.pending;
        view.running = g.running;
        view.succeeded = g.succeeded;
        view.failed = g.failed;
        view.cancelled = g.cancelled;
        view.blocked = g.blocked;
        view.settings = g.settings.map(Into::into).unwrap_or_default();
        view.mean_run_time = g.mean_run_ms.map(std::time::Duration::from_millis);
        view.times = GroupTimes {
            wait_p50: g.wait_p50_ms.map(std::time::Duration::from_millis),
            wait_p95: g.wait_p95_ms.map(std::time::Duration::from_millis),
            run_p50: g.run_p50_ms.map(std::time::Duration::from_millis),
            run_p95: g.run_p95_ms.map(std::time::Duration::from_millis),
        };
        Ok(view)
    }
}

#[doc(hidden)]
impl From<MinuteCounts> for proto::MinuteCounts {
    fn from(m: MinuteCounts) -> Self {
        proto::MinuteCounts {
            minute_ms: m.minute.0,
            accepted: m.accepted,
            started: m.started,
            succeeded: m.succeeded,
            failed: m.failed,
            cancelled: m.cancelled,
            pending: m.pending,
        }
    }
}

#[doc(hidden)]
impl From<proto::MinuteCounts> for MinuteCounts {
    fn from(m: proto::MinuteCounts) -> Self {
        MinuteCounts {
            minute: crate::time::Timestamp(m.minute_ms),
            accepted: m.accepted,
            started: m.started,
            succeeded: m.succeeded,
            failed: m.failed,
            cancelled: m.cancelled,
            pending: m.pending,
        }
    }
}
