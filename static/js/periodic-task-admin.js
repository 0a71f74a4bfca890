// The admin's periodic task form (templates/admin/djcelery/change_periodictask_form.html), as
// django-celery-beat's own inline script does it: the crontab's help says what the chosen crontab
// means, in words, in place of the separate "crontab translation" row.
{
  const $ = django.jQuery;
  const readableCrontabs = JSON.parse(document.getElementById("readable-crontabs").textContent);
  const help = document.currentScript.dataset.crontabHelp;
  $(".field-crontab_translation").hide();
  $(".field-crontab").change(() => {
    const translation = `Translation: ${readableCrontabs[$("#id_crontab").val()]}`;
    $(".field-crontab .help").text(help).append("<br>", document.createTextNode(translation));
  });
}
