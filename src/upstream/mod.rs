//! Outbound SMTP client, pool and admission.
