// Small progressive enhancements; every page works without them.
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (!source) return;
  const text = source.value !== undefined && source.tagName !== "PRE" ? source.value : source.textContent;
  const done = () => {
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => fallbackCopy(text, done));
  } else {
    fallbackCopy(text, done);
  }
});

function fallbackCopy(text, done) {
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  document.execCommand("copy");
  area.remove();
  done();
}

// Close the workspace switcher when clicking elsewhere.
document.addEventListener("click", (event) => {
  document.querySelectorAll("details.switcher[open]").forEach((d) => {
    if (!d.contains(event.target)) d.removeAttribute("open");
  });
});

// Confirm destructive actions marked with data-confirm.
document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// The menu button of narrow screens: the sidebar slides in over the page. While it is closed
// there it is also inert, so Tab never walks into links nobody can see (CSS hides it as well,
// for the moment before this script runs).
const narrowScreen = window.matchMedia("(max-width: 860px)");

function setNavigation(open) {
  const shell = document.querySelector(".shell");
  const button = document.querySelector("[data-nav-toggle]");
  const sidebar = document.getElementById("sidebar");
  if (!shell || !button || !sidebar) return;
  shell.classList.toggle("nav-open", open);
  button.setAttribute("aria-expanded", open ? "true" : "false");
  sidebar.inert = narrowScreen.matches && !open;
}

document.addEventListener("click", (event) => {
  const toggle = event.target.closest("[data-nav-toggle]");
  if (toggle) {
    const open = toggle.getAttribute("aria-expanded") !== "true";
    setNavigation(open);
    if (open) document.querySelector("#sidebar a, #sidebar summary")?.focus();
  } else if (event.target.closest("[data-nav-close]")) {
    setNavigation(false);
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || !document.querySelector(".shell.nav-open")) return;
  setNavigation(false);
  document.querySelector("[data-nav-toggle]")?.focus();
});

narrowScreen.addEventListener("change", () => setNavigation(false));
setNavigation(false);

// The theme toggle: switch the colours at once; htmx saves the choice (templates/includes/theme_toggle.html).
document.addEventListener("click", (event) => {
  const choice = event.target.closest("[data-theme-choice]");
  if (!choice) return;
  document.documentElement.dataset.theme = choice.dataset.themeChoice;
  choice.closest("[data-theme-form]").querySelectorAll("[data-theme-choice]").forEach((button) => {
    button.setAttribute("aria-pressed", button === choice ? "true" : "false");
  });
});

// Tables, code and wide charts that scroll sideways get a tab stop, so the keyboard can scroll them too
// (WCAG 2.1.1). Only while they overflow: a table that fits is not worth a stop of its own.
function markScrollStop(target) {
  const scrolls = target.scrollWidth > target.clientWidth + 1 || target.scrollHeight > target.clientHeight + 1;
  if (scrolls && !target.hasAttribute("tabindex")) {
    target.tabIndex = 0;
    target.dataset.scrollStop = "";
  } else if (!scrolls && "scrollStop" in target.dataset) {
    target.removeAttribute("tabindex");
    delete target.dataset.scrollStop;
  }
}
const scrollStops = new ResizeObserver((entries) => entries.forEach(({ target }) => markScrollStop(target)));
function observeScrollables(root) {
  root.querySelectorAll(".table-wrap, pre.code, .chart-scroll").forEach((el) => {
    markScrollStop(el); // at once (the page is laid out: this script is deferred), then on every resize
    scrollStops.observe(el);
    if (el.matches(".chart-scroll")) el.scrollLeft = el.scrollWidth; // the latest days first
  });
}
observeScrollables(document);
document.addEventListener("htmx:load", (event) => observeScrollables(event.target)); // content htmx brought in

// A search box in front of a long select marked data-searchable (the time zones): typing narrows
// the options (and their groups) and picks the first match; the select itself works without it.
function normalise(text) {
  return text.toLowerCase().replace(/[\s_/]+/g, " ").trim();
}

document.querySelectorAll("select[data-searchable]").forEach((select) => {
  const box = document.createElement("input");
  box.type = "search";
  box.className = "select-filter";
  box.placeholder = `Search ${select.dataset.searchable}`;
  box.setAttribute("aria-label", `Search ${select.dataset.searchable}`);
  box.setAttribute("aria-controls", select.id);
  box.autocomplete = "off";
  select.before(box);
  box.addEventListener("input", () => {
    const query = normalise(box.value);
    let first = null;
    select.querySelectorAll("option").forEach((option) => {
      const match = !query || normalise(`${option.value} ${option.textContent}`).includes(query);
      option.hidden = !match;
      if (match && !first) first = option;
    });
    select.querySelectorAll("optgroup").forEach((group) => {
      group.hidden = !group.querySelector("option:not([hidden])");
    });
    if (first && (!select.selectedOptions.length || select.selectedOptions[0].hidden)) select.value = first.value;
  });
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter") event.preventDefault();  // picking a zone is not submitting the form
  });
});

// Forms marked data-track-changes (Model permissions) say when they hold changes not yet saved:
// the row is highlighted, a note appears, and leaving the page asks first.
function formIsDirty(form) {
  return Array.from(form.elements).some((field) => {
    if (field.type === "checkbox" || field.type === "radio") return field.checked !== field.defaultChecked;
    if (field.tagName === "SELECT") return Array.from(field.options).some((o) => o.selected !== o.defaultSelected);
    if (field.type === "hidden" || field.type === "submit" || field.tagName === "BUTTON") return false;
    return field.value !== field.defaultValue;
  });
}

function dirtyForms() {
  return Array.from(document.querySelectorAll("form[data-track-changes]")).filter((form) => !form.dataset.submitting && formIsDirty(form));
}

function showUnsaved() {
  const dirty = dirtyForms();
  document.querySelectorAll("form[data-track-changes]").forEach((form) => {
    const on = dirty.includes(form);
    (form.closest("tr") || form).classList.toggle("unsaved", on);
    const button = form.querySelector("button[type=submit]");
    if (button) button.classList.toggle("btn-primary", on);
  });
  document.querySelectorAll("[data-unsaved-note]").forEach((note) => { note.hidden = dirty.length === 0; });
}

document.addEventListener("change", (event) => {
  if (event.target.form && event.target.form.matches("[data-track-changes]")) showUnsaved();
});
document.addEventListener("input", (event) => {
  if (event.target.form && event.target.form.matches("[data-track-changes]")) showUnsaved();
});
document.addEventListener("submit", (event) => {
  if (event.target.matches("[data-track-changes]") && !event.defaultPrevented) event.target.dataset.submitting = "1";
});
window.addEventListener("beforeunload", (event) => {
  if (dirtyForms().length === 0) return;
  event.preventDefault();
  event.returnValue = "";  // older browsers need a value to ask
});
