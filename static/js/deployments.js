// Deployments pages: language tabs in Code Examples and the upstream fields of the form.
// Both work without JavaScript (tabs are links, all upstream fields show); this only enhances.

function selectLanguage(root, lang) {
  root.querySelectorAll("[data-lang]").forEach((tab) => {
    const on = tab.dataset.lang === lang;
    tab.classList.toggle("active", on);
    tab.setAttribute("aria-selected", on ? "true" : "false");
  });
  root.querySelectorAll("[data-lang-panel]").forEach((panel) => {
    panel.hidden = panel.dataset.langPanel !== lang;
  });
}

document.addEventListener("click", (event) => {
  const tab = event.target.closest("[data-examples] [data-lang]");
  if (!tab || event.metaKey || event.ctrlKey || event.shiftKey) return;
  // All languages are already on the page (and may hold a key shown once): switch in place.
  event.preventDefault();
  selectLanguage(tab.closest("[data-examples]"), tab.dataset.lang);
  const url = new URL(window.location.href);
  url.searchParams.set("tab", "examples");
  url.searchParams.set("lang", tab.dataset.lang);
  history.replaceState(history.state, "", url);
});

document.addEventListener("keydown", (event) => {
  const tab = event.target.closest("[data-examples] [data-lang]");
  if (!tab || (event.key !== "ArrowRight" && event.key !== "ArrowLeft")) return;
  const tabs = Array.from(tab.parentElement.querySelectorAll("[data-lang]"));
  const next = tabs[(tabs.indexOf(tab) + (event.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
  next.focus();
  next.click();
});

function syncUpstream(form) {
  const kind = form.querySelector("select[name=upstream_kind]");
  if (!kind) return;
  form.querySelectorAll("[data-upstream]").forEach((block) => {
    block.hidden = block.dataset.upstream !== kind.value;
  });
}

document.addEventListener("change", (event) => {
  if (event.target.name === "upstream_kind") syncUpstream(event.target.form);
});

document.querySelectorAll("[data-upstream-form]").forEach(syncUpstream);
