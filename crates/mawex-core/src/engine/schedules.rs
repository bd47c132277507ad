//! Cron schedules: create, pause, delete, and firing the ticks that are due.

use mawex_api::{ApiError, ScheduleName, ScheduleSpec, ScheduleView, Timestamp};

use super::cron::{self, Compiled, Due};
use crate::state::{stored, Event};

use super::{Engine, Output};

impl Engine {
    /// Creates a schedule; the same one again is a no-op, another under its name a conflict.
    pub(crate) fn create_schedule(
        &mut self,
        spec: ScheduleSpec,
        now: Timestamp,
        out: &mut Output,
    ) -> Result<(), ApiError> {
        let compiled = Compiled::new(&spec.cron, &spec.time_zone)?;
        spec.task.validate(self.config.max_payload_bytes)?;
        if !spec.task.after.is_empty() || spec.task.output_limit.is_some() {
            return Err(ApiError::InvalidArgument(format!(
                "schedule {}: a scheduled task cannot run after other tasks or declare an \
                 output limit (each tick's task stands alone)",
                spec.name
            )));
        }
        let spec = stored::ScheduleSpec::from(spec);
        match self.state.schedule(&spec.name) {
            Some(existing) if existing.spec == spec => Ok(()),
            Some(_) => Err(ApiError::Conflict(format!(
                "a different schedule named {} exists; delete it first",
                spec.name
            ))),
            None => {
                self.compiled.insert(spec.name.clone(), compiled);
                self.emit(Event::ScheduleCreated { spec, at: now }, out);
                Ok(())
            }
        }
    }

    /// Pauses or resumes a schedule.
    pub(crate) fn pause_schedule(
        &mut self,
        name: ScheduleName,
        paused: bool,
        now: Timestamp,
        out: &mut Output,
    ) -> Result<(), ApiError> {
        let schedule = self
            .state
            .schedule(&name)
            .ok_or_else(|| ApiError::InvalidArgument(format!("no schedule is named {name}")))?;
        if schedule.paused != paused {
            self.emit(
                Event::SchedulePaused {
                    name,
                    paused,
                    at: now,
                },
                out,
            );
        }
        Ok(())
    }

    /// Deletes a schedule (deleting an unknown one is harmless, so a retry is too).
    pub(crate) fn delete_schedule(&mut self, name: ScheduleName, out: &mut Output) {
        if self.state.schedule(&name).is_some() {
            self.compiled.remove(&name);
            self.emit(Event::ScheduleDeleted { name }, out);
        }
    }

    /// Every schedule as clients see it, with its next tick: the first after the last it
    /// handled, or, paused, the first after `now`.
    pub(crate) fn schedule_views(&self, now: Timestamp) -> Vec<ScheduleView> {
        self.state
            .schedules()
            .map(|s| {
                let after = if s.paused {
                    s.handled_through.max(now)
                } else {
                    s.handled_through
                };
                let next = match self.compiled.get(&s.spec.name) {
                    Some(compiled) => compiled.next_after(after),
                    None => Compiled::new(&s.spec.cron, &s.spec.time_zone)
                        .ok()
                        .and_then(|compiled| compiled.next_after(after)),
                };
                ScheduleView::new(s.spec.clone().into(), s.paused, s.last_tick, s.fired)
                    .with_next_tick(next)
            })
            .collect()
    }

    /// Fires the schedules whose ticks are due, under their missed-ticks policy.
    pub(super) fn fire_schedules(&mut self, now: Timestamp, out: &mut Output) {
        let due: Vec<(ScheduleName, Due)> = self
            .state
            .schedules()
            .filter(|s| !s.paused)
            .filter_map(|s| {
                let compiled = match self.compiled.get(&s.spec.name) {
                    Some(c) => c.clone(),
                    None => Compiled::new(&s.spec.cron, &s.spec.time_zone).ok()?,
                };
                let due = cron::decide(&compiled, s.spec.missed, s.handled_through, now)?;
                Some((s.spec.name.clone(), due))
            })
            .collect();
        for (name, due) in due {
            let Some(schedule) = self.state.schedule(&name) else {
                continue;
            };
            let tick = match due {
                Due::Skip(through) => {
                    self.emit(Event::ScheduleSkipped { name, through }, out);
                    continue;
                }
                Due::Fire(tick) | Due::FireSkipping(tick) => tick,
            };
            let mut task = schedule.spec.task.clone();
            task.id = name.task_id(tick);
            task.clear_run_at();
            self.emit(
                Event::ScheduleFired {
                    name,
                    tick,
                    task,
                    at: now,
                },
                out,
            );
        }
    }
}
