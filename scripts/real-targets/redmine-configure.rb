# Idempotent Redmine configuration for incident-gateway tests.
# Run with: cd /usr/share/redmine && REDMINE_INSTANCE=default bundle exec rails runner -e production /path/redmine-configure.rb
api_key   = ENV.fetch('REDMINE_API_KEY')
gw_key    = ENV.fetch('REDMINE_GATEWAY_API_KEY')
mail_key  = ENV.fetch('REDMINE_MAIL_KEY')
admin_pw  = ENV.fetch('REDMINE_ADMIN_PASSWORD')
gw_pw     = ENV.fetch('REDMINE_GATEWAY_PASSWORD')
out       = ENV.fetch('REDMINE_ENV_OUT')
url       = ENV.fetch('REDMINE_URL')

Setting.rest_api_enabled = '1'
Setting.mail_handler_api_enabled = '1'
Setting.mail_handler_api_key = mail_key
Setting.host_name = url.sub(%r{\Ahttps?://}, '')
Setting.protocol = 'http'
Setting.mail_from = 'redmine@soc.example'
Setting.bcc_recipients = '0' if Setting.respond_to?(:bcc_recipients=)
Setting.notified_events = %w(issue_added issue_updated issue_note_added issue_status_updated issue_priority_updated)
Setting.default_users_no_self_notified = '0' if Setting.respond_to?(:default_users_no_self_notified=)
Setting.login_required = '0'

# A new Token gets a random value when it is created, whatever was set before: create it,
# then write the fixed key into the row.
def set_key(user, value)
  t = Token.where(user_id: user.id, action: 'api').first || Token.create!(user: user, action: 'api')
  t.update_column(:value, value)
end

admin = User.find_by_login('admin') || User.new.tap { |u| u.login = 'admin'; u.admin = true }
admin.firstname ||= 'Redmine'; admin.lastname ||= 'Admin'
admin.mail = 'admin@soc.example'
admin.admin = true
admin.password = admin_pw; admin.password_confirmation = admin_pw
admin.must_change_passwd = false
admin.status = User::STATUS_ACTIVE
admin.save!
set_key(admin, api_key)

gw = User.find_by_login('gateway') || User.new.tap { |u| u.login = 'gateway' }
gw.firstname = 'Incident'; gw.lastname = 'Gateway'
gw.mail = 'gateway@soc.example'
gw.password = gw_pw; gw.password_confirmation = gw_pw
gw.must_change_passwd = false
gw.status = User::STATUS_ACTIVE
gw.mail_notification = 'all'
gw.save!
gw.pref.no_self_notified = false
gw.pref.save!
set_key(gw, gw_key)
admin.mail_notification = 'all'; admin.save!
admin.pref.no_self_notified = false; admin.pref.save!

bug = Tracker.find_by_name('Bug') or raise 'tracker Bug missing (load_default_data?)'

cf = IssueCustomField.find_by_name('Correlation key') || IssueCustomField.new(name: 'Correlation key')
cf.field_format = 'string'
cf.is_for_all = true
cf.is_filter = true
cf.searchable = true
cf.visible = true
cf.is_required = false
cf.tracker_ids = Tracker.pluck(:id)
cf.save!

proj = Project.find_by_identifier('soc') || Project.new(identifier: 'soc')
proj.name = ENV.fetch('REDMINE_PROJECT_NAME', 'soc')  # notification subjects: "[soc - Bug #N] ..."
proj.is_public = true
proj.save!
proj.enabled_module_names = (proj.enabled_module_names | %w(issue_tracking))
proj.tracker_ids = (proj.tracker_ids | [bug.id])
proj.save!

role = Role.find_by_name('Developer') or raise 'role Developer missing'
%i(view_issues add_issues edit_issues add_issue_notes set_issues_private).each { |p| role.add_permission!(p) unless role.permissions.include?(p) }
[gw, admin].each do |u|
  m = Member.where(project_id: proj.id, user_id: u.id).first || Member.new(project: proj, user: u)
  m.role_ids = (m.role_ids | [role.id])
  m.save!
end

prios = IssuePriority.order(:position).map { |p| "#{p.name}=#{p.id}" }.join(',')
stats = IssueStatus.order(:position).map { |s| "#{s.name}=#{s.id}#{s.is_closed ? '(closed)' : ''}" }.join(',')
closed = IssueStatus.where(is_closed: true).order(:position).first
File.write(out, <<~ENV)
  REDMINE_URL=#{url}
  REDMINE_API_KEY=#{api_key}
  REDMINE_ADMIN_LOGIN=admin
  REDMINE_ADMIN_PASSWORD=#{admin_pw}
  REDMINE_MAIL_KEY=#{mail_key}
  REDMINE_PROJECT=soc
  REDMINE_PROJECT_ID=#{proj.id}
  REDMINE_TRACKER_BUG_ID=#{bug.id}
  REDMINE_CF_ID=#{cf.id}
  REDMINE_CF_NAME='Correlation key'
  REDMINE_GATEWAY_LOGIN=gateway
  REDMINE_GATEWAY_EMAIL=gateway@soc.example
  REDMINE_GATEWAY_PASSWORD=#{gw_pw}
  REDMINE_GATEWAY_API_KEY=#{gw_key}
  REDMINE_PRIORITIES='#{prios}'
  REDMINE_STATUSES='#{stats}'
  REDMINE_CLOSED_STATUS_ID=#{closed.id}
  REDMINE_NOTIFY_SMTP=127.0.0.1:2526
ENV
puts File.read(out)
