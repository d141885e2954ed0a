"""The human review page, served by the fleet API at /review: one frame at a time, with its
neighbours for context, its current label and the champion's opinion; the reviewer sets
the right label. Plain HTML forms, so it works in any browser and with no JavaScript.

Only signed-in reviewers see frames or correct labels. A reviewer signs in at /review/login
with the token ``autosink fleet add-reviewer`` printed; the browser keeps a session cookie
(HttpOnly, SameSite=Strict, path /review). Every form post carries the session's CSRF token
and, when the browser sends an Origin, must come from this origin; a correction records the
signed-in reviewer, never a name typed into the form."""

from __future__ import annotations

import hmac
import html
import io
from pathlib import Path
from urllib.parse import quote

import pandas as pd
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from autosink_platform.files import is_local, location
from autosink_platform.fleet.devices import ReviewerRegistry, ReviewSession, RevokedToken, UnknownToken
from autosink_platform.labeling.review import Correction, ReviewLog
from autosink_platform.lake.store import FeatureStore

CONTEXT = 2  # frames shown before and after the one under review
COOKIE = "autosink_review"

LOGIN = """
<form method="post" action="/review/login">
 <p><label>Reviewer token <input id="token" name="token" type="password" autocomplete="off" required></label></p>
 <button id="sign-in">Sign in</button>
</form>
<p>{message}</p>"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>autosink review: {pipeline}</title>
<style>
 body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 56rem; }}
 img.frame {{ image-rendering: pixelated; border: 3px solid #333; }}
 .context img {{ image-rendering: pixelated; margin-right: .3rem; border: 1px solid #aaa; opacity: .8; }}
 .context img.current {{ border: 2px solid #c00; opacity: 1; }}
 table td {{ padding: .2rem .8rem .2rem 0; }}
 button {{ font-size: 1.05rem; padding: .5rem 1rem; margin: .5rem .5rem 0 0; }}
</style></head><body>
<h1>Label review: {pipeline}</h1>
{body}
</body></html>"""


def _label_text(label) -> str:
    return "unlabeled" if pd.isna(label) else ("open" if int(label) == 1 else "closed")


def _same_origin(request: Request) -> bool:
    """A browser names the page a form was posted from; it must be this server's. (Without
    an Origin header, the CSRF token alone decides.)"""
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


def review_router(store: FeatureStore, lake_root: Path, reviewers: ReviewerRegistry) -> APIRouter:
    router = APIRouter()
    reviews = ReviewLog(store.root)
    page = lambda body: PAGE.format(pipeline=html.escape(store.root.name), body=body)  # noqa: E731

    def signed_in(request: Request) -> ReviewSession:
        session = reviewers.session(request.cookies.get(COOKIE))
        if session is None:
            raise HTTPException(401, "sign in at /review/login first")
        return session

    def checked_post(request: Request, csrf: str) -> ReviewSession:
        """The session of a form post that is this server's own page's, or 401/403."""
        session = signed_in(request)
        if not _same_origin(request):
            raise HTTPException(403, f"cross-site post from {request.headers.get('origin')!r} refused")
        if not hmac.compare_digest(csrf.encode(), session.csrf.encode()):
            raise HTTPException(403, "the form's CSRF token does not match this session: reload the page")
        return session

    @router.get("/review/login", response_class=HTMLResponse)
    def login_page() -> str:
        return page(LOGIN.format(message=""))

    @router.post("/review/login", response_model=None)
    def login(request: Request, token: str = Form(...)) -> Response:
        if not _same_origin(request):
            raise HTTPException(403, f"cross-site sign-in from {request.headers.get('origin')!r} refused")
        try:
            cookie, _ = reviewers.sign_in(token.strip())
        except (UnknownToken, RevokedToken) as e:
            return HTMLResponse(page(LOGIN.format(message=f"<b id='error'>{html.escape(str(e))}</b>")), 401)
        response = RedirectResponse("/review", status_code=303)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=ReviewerRegistry.SESSION_HOURS * 3600,
            path="/review",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/review/logout")
    def logout(request: Request, csrf: str = Form(...)) -> RedirectResponse:
        checked_post(request, csrf)
        reviewers.sign_out(request.cookies[COOKIE])
        response = RedirectResponse("/review/login", status_code=303)
        response.delete_cookie(COOKIE, path="/review")
        return response

    def queue() -> pd.DataFrame:
        path = store.root / "review_queue.parquet"
        if not path.exists():
            return pd.DataFrame(columns=["session_id", "frame_index"])
        q = pd.read_parquet(io.BytesIO(path.read_bytes()))
        done = reviews.reviewed_frames()
        keep = [(s, int(f)) not in done for s, f in zip(q["session_id"], q["frame_index"], strict=True)]
        return q[keep].reset_index(drop=True)

    def current_label(session_id: str, frame_index: int) -> pd.Series:
        labels = store.get_labels([session_id])
        row = labels[labels["frame_index"] == frame_index]
        if row.empty:
            raise HTTPException(404, f"session {session_id!r} has no frame {frame_index}")
        return row.iloc[0]

    @router.get("/review", response_class=HTMLResponse, response_model=None)
    def review_page(request: Request, skip: int = 0) -> str | Response:
        session = reviewers.session(request.cookies.get(COOKIE))
        if session is None:
            return RedirectResponse("/review/login", status_code=303)
        who = f"""<form method="post" action="/review/logout"><p>Signed in as <b id="reviewer">{html.escape(session.reviewer)}</b>
 <input type="hidden" name="csrf" value="{session.csrf}"> <button id="sign-out">Sign out</button></p></form>"""
        q = queue()
        if skip >= len(q):
            body = f"<p id='empty'>Nothing left to review ({len(q)} frames queued, {skip} skipped).</p>"
            return page(who + body)
        item = q.iloc[skip]
        sid, idx = str(item["session_id"]), int(item["frame_index"])
        now = current_label(sid, idx)
        n = len(store.get_session(sid)["frames"])
        context = "".join(
            f"<img src='/review/frames/{quote(sid)}/{k}.png' width='96' alt='frame {k}'"
            f"{' class=current' if k == idx else ''}>"
            for k in range(max(0, idx - CONTEXT), min(n, idx + CONTEXT + 1))
        )
        body = f"""{who}
<p>{len(q) - skip} frames to review. Session <b id="session">{html.escape(sid)}</b>
 (device {html.escape(str(item["device_id"]))}), frame <b id="frame-index">{idx}</b> of {n}.</p>
<img class="frame" src="/review/frames/{quote(sid)}/{idx}.png" width="320" alt="frame under review">
<div class="context"><p>Before and after:</p>{context}</div>
<table>
 <tr><td>current label</td><td id="current-label">{_label_text(now["label"])}</td></tr>
 <tr><td>source</td><td id="current-source">{html.escape(str(now["label_source"]) if pd.notna(now["label_source"]) else "none")}
   (confidence {float(now["confidence"]):.2f})</td></tr>
 <tr><td>champion model</td><td>{float(item["champion_prob"]):.2f} probability the valve should be open</td></tr>
 <tr><td>why it is here</td><td>{html.escape(str(item["reason"]))}</td></tr>
</table>
<form method="post" action="/review">
 <input type="hidden" name="session_id" value="{html.escape(sid)}">
 <input type="hidden" name="frame_index" value="{idx}">
 <input type="hidden" name="skip" value="{skip}">
 <input type="hidden" name="csrf" value="{session.csrf}">
 <button id="label-open" name="label" value="1">Open: hands or dishes under the spout</button>
 <button id="label-closed" name="label" value="0">Closed: nothing under the spout</button>
</form>
<p><a id="skip" href="/review?skip={skip + 1}">Skip this frame</a></p>"""
        return page(body)

    @router.get("/review/frames/{session_id}/{frame_index}.png")
    def frame(request: Request, session_id: str, frame_index: int) -> Response:
        signed_in(request)  # frames are pictures of people's kitchens
        try:
            frames = store.get_session(session_id)["frames"]
        except KeyError:
            raise HTTPException(404, f"no ingested session {session_id!r}") from None
        if not 0 <= frame_index < len(frames):
            raise HTTPException(404, f"session {session_id!r} has no frame {frame_index}")
        path = location(lake_root) / frames[frame_index]
        if is_local(path):
            return FileResponse(path, media_type="image/png")
        return Response(path.read_bytes(), media_type="image/png")

    @router.post("/review")
    def correct(
        request: Request,
        session_id: str = Form(...),
        frame_index: int = Form(...),
        label: int = Form(...),
        csrf: str = Form(""),
        skip: int = Form(0),
    ) -> RedirectResponse:
        reviewer = checked_post(request, csrf).reviewer
        if label not in (0, 1):
            raise HTTPException(422, f"label must be 0 or 1, got {label}")
        now = current_label(session_id, frame_index)
        reviews.append(
            Correction(
                session_id,
                frame_index,
                label,
                reviewer,
                None if pd.isna(now["label"]) else int(now["label"]),
                None if pd.isna(now["label_source"]) else str(now["label_source"]),
            )
        )
        return RedirectResponse(f"/review?skip={skip}", status_code=303)

    return router
