//! The tasks page: a search over every field a task is found by, its results a page at a
//! time, and bulk actions on the tasks ticked or on everything the search matches.

use maud::{html, Markup};
use mawex_api::TaskState;

use crate::api::TaskSearch;
use crate::json::{filled, Task};
use crate::{AppState, WebError};

/// Tasks a page of the list shows.
const PAGE: usize = 50;

/// The search and bulk-action forms: above the live fragment, so that an update of the
/// results never resets what is being typed.
pub(crate) fn controls(search: &TaskSearch) -> Markup {
    let text = |name: &'static str, label: &'static str, value: &Option<String>| {
        html! { input name=(name) placeholder=(label) title=(label) value=[filled(value)]; }
    };
    let filter = search.filter();
    let filter_fields = [
        ("group", &filter.group),
        ("state", &filter.state),
        ("handler", &filter.handler),
        ("dedup_key", &filter.dedup_key),
        ("fairness_key", &filter.fairness_key),
        ("error", &filter.error),
        ("kind", &filter.kind),
        ("payload", &filter.payload),
        ("from", &filter.from),
        ("until", &filter.until),
    ];
    let newest = search.order.as_deref() == Some("newest");
    html! {
        form.filters.search method="get" action="/tasks" {
            (text("id", "task id", &search.id))
            (text("group", "group", &search.group))
            select name="state" title="state" {
                option value="" { "any state" }
                @for s in TaskState::ALL {
                    option value=(s.name()) selected[filled(&search.state) == Some(s.name())] { (s.name()) }
                }
            }
            (text("handler", "handler", &search.handler))
            (text("dedup_key", "dedup key", &search.dedup_key))
            (text("fairness_key", "fairness key", &search.fairness_key))
            (text("error", "error text", &search.error))
            select name="kind" title="the last error's kind" {
                option value="" { "any error kind" }
                @for k in mawex_api::ErrorKind::ALL {
                    option value=(k.name()) selected[filled(&search.kind) == Some(k.name())] { (k.name()) }
                }
            }
            (text("payload", "payload text", &search.payload))
            (text("from", "submitted from (UTC, 2026-01-31 09:00)", &search.from))
            (text("until", "submitted before (UTC)", &search.until))
            select name="order" title="order" {
                option value="oldest" selected[!newest] { "oldest first" }
                option value="newest" selected[newest] { "newest first" }
            }
            button type="submit" { "Search" }
            a href="/tasks" { "Clear" }
        }
        form.filters #bulk data-json="/api/v1/tasks/bulk" data-confirm="Go ahead?" {
            select name="action" title="bulk action" required {
                option value="" { "Bulk action…" }
                option value="cancel" { "Cancel (blocked, pending, running)" }
                option value="retry" { "Retry (failed)" }
                option value="purge" { "Purge (failed)" }
                option value="move" { "Move to group (pending)" }
                option value="reprioritise" { "Set priority (pending)" }
                option value="front" { "To the front (pending)" }
                option value="back" { "To the back (pending)" }
            }
            input name="to_group" placeholder="to group" title="the group to move to";
            input type="number" name="priority" placeholder="priority" title="the new priority";
            // The filter as an object, even when empty (every task): its fields go in it.
            input type="hidden" name="filter" value="{}" data-json-value="";
            @for (name, value) in filter_fields {
                @if let Some(value) = filled(value) {
                    input type="hidden" name={ "filter." (name) } value=(value);
                }
            }
            button type="submit" name="scope" value="selected" { "On the ticked tasks" }
            // A search by id is of one task: the ticked box is the way to act on it.
            @if filled(&search.id).is_none() {
                button type="submit" name="scope" value="filter" { "On every task the search matches" }
            }
        }
    }
}

/// The results: one page of the search, each task with a box to tick for a bulk action.
pub(crate) async fn results(app: &AppState, search: &TaskSearch) -> Result<Markup, WebError> {
    let page = search.run(app.proxy.as_ref(), PAGE).await?;
    let tasks: Vec<Task> = page.tasks.iter().map(Task::from).collect();
    let base = search.without_page();
    let scanned_short = page.next.is_some() && tasks.len() < search.limit.unwrap_or(PAGE);
    Ok(html! {
        table.tasks {
            thead {
                tr {
                    th { input type="checkbox" data-tick-all="ids[]" title="tick every task of this page"; }
                    th { "task" } th { "group" } th { "handler" } th { "state" } th.num { "attempt" }
                    th { "submitted" } th { "error" }
                }
            }
            tbody {
                @for t in &tasks {
                    tr {
                        td { input type="checkbox" name="ids[]" form="bulk" value=(t.id) title="tick for a bulk action"; }
                        td { a href={ "/tasks/" (t.id) } { (t.id) } }
                        td { (t.group) } td { (t.handler) }
                        td class={ "state-" (t.state) } { (t.state) }
                        td.num { (t.attempt) } td { (t.submitted_at) }
                        td.bad { @if let Some(e) = &t.error { (e.kind) ": " (e.message) } }
                    }
                }
                @if tasks.is_empty() { tr { td colspan="8" .muted { "No task matches here." } } }
            }
        }
        @if let Some(next) = &page.next {
            p {
                @if scanned_short { span.muted { "This page searched as far as its limit allows. " } }
                a href={ "/tasks?" (base) @if !base.is_empty() { "&" } "after=" (next) } { "Next page →" }
            }
        }
    })
}
