// Secrets form: when "All models" / "All BYOK" is ticked, dim the specific picks it covers
// (they are kept, and ignored by the server, so unticking restores the previous choice).
function syncAllToggles() {
  document.querySelectorAll("input[data-all-for]").forEach((box) => {
    const list = document.getElementById("list-" + box.dataset.allFor);
    if (list) list.classList.toggle("is-covered", box.checked);
  });
}
document.addEventListener("change", (event) => {
  if (event.target.matches("input[data-all-for]")) syncAllToggles();
});
document.addEventListener("DOMContentLoaded", syncAllToggles);
