// autolabel review: keyboard-first labeling. Every action on screen has a key; see the help overlay (?).
// Served after labels.js (window.autolabel: the feedback line, digit keys, the chosen labels; web.py _STATIC).
"use strict";

(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const { say, pressed } = window.autolabel;
  const help = document.getElementById("help");
  const guidelines = document.getElementById("guidelines");
  const dataNode = document.getElementById("item-data");
  const item = dataNode ? JSON.parse(dataNode.textContent) : null;
  let busy = false;
  let leaseLost = false;

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    });
    let payload = {};
    try { payload = await response.json(); } catch (e) { payload = {}; }
    if (!response.ok) {
      const error = new Error(payload.error || response.statusText || ("HTTP " + response.status));
      error.status = response.status;
      throw error;
    }
    return payload;
  }

  async function next() {
    const claimed = await post("/api/claim");
    if (claimed.item !== null) window.location.assign("/item/" + claimed.item);
    else if (item) window.location.assign("/");
    else say("Nothing for you right now: the items left are held by other reviewers, or need someone who has not reviewed them.");
  }

  async function act(work) {
    if (busy) return;
    busy = true;
    try { await work(); } catch (e) { failed(e); } finally { busy = false; }
  }

  function failed(e) {
    if (item && e.status === 409 && /does not hold/.test(e.message)) { lost(e.message); return; }
    say(e.message, "error");
  }

  // the lease ran out and the item went back to the queue: say so, and what Enter does now
  function lost(detail) {
    leaseLost = true;
    document.body.classList.add("lease-lost");
    say("You no longer hold this item — " + detail + ". It went back to the queue; your labels here were not saved. "
        + "Press Enter for your next item.", "error");
  }

  // -- overlays: help (?) and guidelines (G), focus kept inside while open -----------------------------------
  let before = null;
  function openOverlay(overlay) {
    if (!overlay) return;
    before = document.activeElement;
    overlay.hidden = false;
    const first = overlay.querySelector("button, a[href], input");
    if (first) first.focus();
  }
  function closeOverlay(overlay) {
    if (!overlay || overlay.hidden) return;
    overlay.hidden = true;
    if (before && before.focus) before.focus();
  }
  function openOverlays() { return [help, guidelines].filter((o) => o && !o.hidden); }
  function toggleHelp(show) {
    if (show === undefined ? help.hidden : show) openOverlay(help); else closeOverlay(help);
  }
  [help, guidelines].forEach((overlay) => {
    if (!overlay) return;
    overlay.addEventListener("click", (e) => { if (e.target === overlay) closeOverlay(overlay); });
    overlay.querySelectorAll("button.close").forEach((b) => b.addEventListener("click", () => closeOverlay(overlay)));
    overlay.addEventListener("keydown", (e) => {  // Tab cycles inside the dialog
      if (e.key !== "Tab") return;
      const focusable = Array.from(overlay.querySelectorAll("button, a[href], input"));
      if (!focusable.length) return;
      const i = focusable.indexOf(document.activeElement);
      const to = e.shiftKey ? (i <= 0 ? focusable.length - 1 : i - 1) : (i === focusable.length - 1 ? 0 : i + 1);
      focusable[to].focus();
      e.preventDefault();
    });
  });
  document.querySelectorAll('[data-action="help"]').forEach((b) => b.addEventListener("click", () => toggleHelp()));
  document.querySelectorAll('[data-action="guidelines"]').forEach((b) => b.addEventListener("click", () => openOverlay(guidelines)));

  // keys every page shares; true when the key was handled
  function commonKeys(e) {
    const open = openOverlays();
    if (open.length) {
      if (e.key === "Escape" || (e.key === "?" && !help.hidden) || ((e.key === "g" || e.key === "G") && guidelines && !guidelines.hidden)) {
        open.forEach(closeOverlay); e.preventDefault();
      }
      return true;
    }
    if (e.key === "?") { toggleHelp(true); e.preventDefault(); return true; }
    if ((e.key === "g" || e.key === "G") && guidelines) { openOverlay(guidelines); e.preventDefault(); return true; }
    if (e.key === "h" || e.key === "H") { window.location.assign("/history"); e.preventDefault(); return true; }
    if (e.key === "b" || e.key === "B") { window.location.assign("/browse"); e.preventDefault(); return true; }
    if (e.key === "Backspace") { e.preventDefault(); act(undo); return true; }
    return false;
  }

  async function undo() {
    const body = item ? { current: item.id, version: item.version } : {};
    const back = await post("/api/undo", body);
    window.location.assign("/item/" + back.item);
  }

  function typing(e) {
    const t = e.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT");
  }

  // -- pages without an item: start, history, browse ------------------------------------------------------
  if (!item) {
    const start = document.querySelector('[data-action="start"]');
    if (start) start.addEventListener("click", () => act(next));
    const rows = Array.from(document.querySelectorAll("[data-reopen], [data-open-item]"));
    document.querySelectorAll("[data-reopen]").forEach((b) => b.addEventListener("click", () => act(async () => {
      const back = await post("/api/items/" + b.dataset.reopen + "/reopen");
      window.location.assign("/item/" + back.item);
    })));
    document.querySelectorAll("[data-open-item]").forEach((b) => b.addEventListener("click", () => act(async () => {
      const opened = await post("/api/items/" + b.dataset.openItem + "/open");
      window.location.assign("/item/" + opened.item);
    })));
    document.querySelectorAll("[data-unskip]").forEach((b) => b.addEventListener("click", () => act(async () => {
      await post("/api/items/" + b.dataset.unskip + "/unskip");
      b.closest("li").remove();
      say("Taken back: the item comes to you in its turn again.");
    })));
    document.addEventListener("keydown", (e) => {
      if (e.ctrlKey || e.metaKey || e.altKey || typing(e)) return;
      if (commonKeys(e)) return;
      if (e.key === "Enter" && start && document.activeElement === document.body) { e.preventDefault(); act(next); }
      else if (/^[1-9]$/.test(e.key) && rows[Number(e.key) - 1]) { e.preventDefault(); rows[Number(e.key) - 1].click(); }
    });
    return;
  }

  // -- the item page ---------------------------------------------------------------------------------------
  const fieldsets = Array.from(document.querySelectorAll("fieldset.field"));
  const note = document.getElementById("note");
  const submitButton = document.getElementById("submit");
  const acceptButton = document.getElementById("accept");
  const optionHelp = document.getElementById("option-help");
  const form = window.autolabel.selection(item.fields, fieldsets);
  const selected = form.selected;
  const touched = {};
  let proposed = item.proposed;
  let revealed = !item.blind;

  item.fields.forEach((f) => { touched[f.name] = false; });
  if (proposed) setSelection(proposed);

  function setSelection(labels) {
    form.set(labels);
    render();
  }

  function render() {
    form.draw(revealed ? proposed : null);
  }

  function describe(fieldIndex, optionIndex) {
    const f = item.fields[fieldIndex];
    if (!optionHelp || !f) return;
    const hint = f.hints[optionIndex];
    optionHelp.textContent = f.options[optionIndex] + (hint ? ": " + hint : "");
  }

  function toggle(fieldIndex, optionIndex) {
    const f = item.fields[fieldIndex];
    if (!f || optionIndex >= f.options.length) return;
    const option = f.options[optionIndex];
    const chosen = selected[f.name];
    describe(fieldIndex, optionIndex);
    const fromModel = !touched[f.name] && chosen.length > 0;
    touched[f.name] = true;
    if (!f.multi) selected[f.name] = chosen[0] === option ? [] : [option];
    else if (fromModel) {  // one keystroke replaces the model's choice; later ones add or remove
      selected[f.name] = [option];
      say(f.name + ": replaced the model's choice with " + option + " (" + f.rule + "; digits now add or remove)");
      render();
      return;
    } else if (chosen.includes(option)) selected[f.name] = chosen.filter((o) => o !== option);
    else if (chosen.length >= f.max) { say(f.name + ": up to " + f.max + " options — remove one first", "error"); return; }
    else chosen.push(option);
    say("");
    render();
  }

  async function submit() {
    if (leaseLost) { await next(); return; }
    const labels = form.answer();
    if (labels === null) {
      render();
      say("Choose at least one option for " + item.fields[form.current].name + ".", "error");
      showField();
      return;
    }
    if (!revealed) {
      const shown = await post("/api/items/" + item.id + "/reveal", { version: item.version, labels });
      document.getElementById("proposal").innerHTML = shown.html; // rendered and escaped by the server
      proposed = shown.labels;
      revealed = true;
      acceptButton.disabled = false;
      submitButton.firstChild.textContent = "Confirm ";
      render();
      say("The model's labels are marked beside yours. Press Enter to confirm yours, or A to take the model's.");
      submitButton.scrollIntoView({ block: "nearest" });
      return;
    }
    await post("/api/items/" + item.id + "/submit", { version: item.version, labels, note: note.value || null });
    await next();
  }

  async function accept() {
    if (!revealed || !proposed) { say("The proposal is hidden until you commit your own labels.", "error"); return; }
    setSelection(proposed);
    await submit();
  }

  async function skip() {
    await post("/api/items/" + item.id + "/skip", { version: item.version });
    await next();
  }

  function showField() {
    const fs = fieldsets[form.current];
    if (fs) fs.scrollIntoView({ block: "nearest" });
  }

  function moveField(step) {
    form.current = (form.current + step + fieldsets.length) % fieldsets.length;
    render();
    showField();
    const f = item.fields[form.current];
    if (f) say(f.name + ": " + f.rule + (f.description ? " — " + f.description : ""));
  }

  fieldsets.forEach((fs, i) => {
    fs.querySelectorAll("button.option").forEach((b, j) => {
      b.addEventListener("click", () => { form.current = i; toggle(i, j); });
      b.addEventListener("focus", () => describe(i, j));
      b.addEventListener("mouseenter", () => describe(i, j));
    });
  });
  submitButton.addEventListener("click", () => act(submit));
  acceptButton.addEventListener("click", () => act(accept));
  document.querySelector('[data-action="skip"]').addEventListener("click", () => act(skip));
  document.querySelector('[data-action="undo"]').addEventListener("click", () => act(undo));
  const nextField = document.querySelector('[data-action="next-field"]');
  if (nextField) nextField.addEventListener("click", () => moveField(1));

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target === note) {
      if (e.key === "Escape") { note.blur(); e.preventDefault(); }
      else if (e.key === "Enter") { e.preventDefault(); act(submit); }
      return;
    }
    if (commonKeys(e)) return;
    const digit = pressed(e);  // picks the option showing that key in the current field
    if (digit !== null) {
      const option = form.keyed(form.current, digit);
      if (option >= 0) toggle(form.current, option);
      else if (item.fields[form.current]) say(item.fields[form.current].name + ": no option on key " + digit, "error");
      e.preventDefault();
      return;
    }
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    // Enter on a focused button presses that button (the browser does it); elsewhere it submits
    if (key === "Enter" && e.target && e.target.tagName === "BUTTON" && e.target !== submitButton
        && !e.target.classList.contains("option")) return;
    const actions = {
      Enter: () => act(submit),
      ArrowDown: () => moveField(1),
      ArrowUp: () => moveField(-1),
      f: () => moveField(e.shiftKey ? -1 : 1),
      a: () => act(accept),
      s: () => act(skip),
      n: () => { note.focus(); note.scrollIntoView({ block: "nearest" }); },
    };
    if (key in actions) { e.preventDefault(); actions[key](); }
  });

  // keep the lease while the page is open
  setInterval(() => {
    if (leaseLost) return;
    post("/api/items/" + item.id + "/renew").catch((e) => (e.status === 409 ? lost(e.message) : say(e.message, "error")));
  }, Math.max(5, item.lease_seconds / 3) * 1000);

  render();
  const target = document.getElementById("target");
  if (target) target.scrollIntoView({ block: "center" });
})();
